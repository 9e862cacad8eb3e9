"""Opening a file as an SWMR reader, with one setting h5py does not expose, set in the
HDF5 library h5py runs on through ctypes."""
from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import Optional

import h5py

#: Metadata read attempts of an SWMR reader. HDF5's default (100, with back-off) makes a
#: damaged file look like a hang; a live writer's torn reads need only a few.
SWMR_READ_ATTEMPTS = 10


def open_swmr(path: str) -> h5py.File:
    """``path`` opened read-only as an SWMR reader, retrying torn metadata reads
    :data:`SWMR_READ_ATTEMPTS` times (HDF5's default where its library is not found)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    lib = _hdf5_library()
    if lib is not None:
        lib.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(SWMR_READ_ATTEMPTS))
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)


@functools.lru_cache(maxsize=1)
def _hdf5_library() -> Optional[ctypes.CDLL]:
    """The HDF5 library h5py runs on, for the one setting h5py does not expose."""
    here = os.path.dirname(h5py.__file__)
    candidates = glob.glob(os.path.join(here, "..", "h5py.libs", "libhdf5-*.so*")) + \
        glob.glob(os.path.join(here, ".dylibs", "libhdf5.*.dylib"))
    candidates = [c for c in candidates if "_hl" not in os.path.basename(c)]
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            lib.H5Pset_metadata_read_attempts.argtypes = [ctypes.c_int64, ctypes.c_uint]
            return lib
        except (OSError, AttributeError):
            continue
    return None
