"""One HDF5 file per rank: the format, its writer and its reader."""
