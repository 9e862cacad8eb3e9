"""The one error of the store: a dump file that cannot be used."""
from __future__ import annotations


class DumpError(Exception):
    """A dump file that cannot be used. ``str()`` is a complete, actionable message."""

    def __init__(self, path: str, problem: str, hint: str = "") -> None:
        self.path, self.problem, self.hint = path, problem, hint
        super().__init__(f"{path}: {problem}" + (f" ({hint})" if hint else ""))

    def __reduce__(self):  # raised in an analysis worker, re-raised in the parent
        return DumpError, (self.path, self.problem, self.hint)
