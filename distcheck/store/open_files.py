"""The pool of open dump files: a run of thousands of ranks keeps a bounded number of
HDF5 files (and their caches) open, closing the least recently used first. A reader
opens its file again when it next needs it."""
from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class HoldsFile(Protocol):
    def release(self) -> None:
        """Close the file; it is opened again on demand."""


class OpenFiles:
    """The readers whose files are open, at most ``limit`` at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._readers: "OrderedDict[int, HoldsFile]" = OrderedDict()

    def use(self, reader: HoldsFile) -> None:
        """``reader`` has its file open and is using it now."""
        key = id(reader)
        if key in self._readers:
            self._readers.move_to_end(key)
            return
        self._readers[key] = reader
        while len(self._readers) > self.limit:
            _, oldest = self._readers.popitem(last=False)
            oldest.release()

    def forget(self, reader: HoldsFile) -> None:
        """``reader`` closed its file for good."""
        self._readers.pop(id(reader), None)

    def close_all(self) -> None:
        while self._readers:
            _, reader = self._readers.popitem(last=False)
            reader.release()


#: The pool every :class:`~distcheck.store.reader.DumpReader` of this process shares.
OPEN_FILES = OpenFiles(limit=64)


def close_open_files() -> None:
    """Close every file readers hold open (they open them again when needed), e.g.
    before forking workers that must open their own."""
    OPEN_FILES.close_all()
