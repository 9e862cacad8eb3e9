"""The probe's optional one-pass kernel (``distcheck/recording/fused.c``), built when
distcheck is installed. Everything else about the package is in pyproject.toml.

The kernel is a plain C library that ``distcheck.recording.fused`` loads with ctypes
from the package's own directory: it uses no Python C API (so it needs a C compiler but
not Python's headers, and defines no ``PyInit_`` function: it is never imported). Where
there is no C compiler, or compiling fails, the install goes on without it, as PyYAML's
does without LibYAML, and the probe uses numpy: the same digests, about 3x slower.

Flags: ``-ffp-contract=off`` (no fused multiply-add) and no fast-math, so every rank's
statistics are the same bits wherever this source is compiled; no ``-march=native``, so
a wheel built on one machine runs on any other: on x86-64 Linux the C file clones its
entry points for AVX2 and AVX-512 and the CPU picks one when the library is loaded.
"""
import hashlib
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_SOURCES = ["distcheck/recording/fused.c", "distcheck/recording/xxhash/xxhash.h"]
#: No fused multiply-add and no fast-math: the same bits wherever it is compiled; no -march.
FLAGS = ["-O3", "-fno-fast-math", "-ffp-contract=off"]


def source_key() -> str:
    """sha256 of fused.c and the xxHash header, as ``distcheck.recording.fused.source_key``
    computes it: the loader refuses a library built from other sources."""
    digest = hashlib.sha256()
    for path in KERNEL_SOURCES:
        with open(os.path.join(HERE, path), "rb") as fh:
            digest.update(fh.read())
    return digest.hexdigest()[:16]


class OptionalBuildExt(build_ext):
    """build_ext that builds the kernel where it can and otherwise says so and goes on."""

    def build_extensions(self) -> None:
        self.check_extensions_list(self.extensions)
        built = [ext for ext in self.extensions if self._build_optional(ext)]
        self.extensions[:] = built  # nothing to copy or list for a kernel that was not built

    def _build_optional(self, ext: Extension) -> bool:
        failure = ""
        # Cloning for AVX2 and AVX-512 needs the C library's ifunc; where it fails, once more without.
        for extra in ([], ["-DDISTCHECK_NO_CLONES"]):
            ext.extra_compile_args = [*FLAGS, *extra]
            try:
                self.build_extension(ext)
                return True
            except (CCompilerError, ExecError, PlatformError, OSError) as exc:
                lines = str(exc).strip().splitlines() or [""]
                failure = f"{type(exc).__name__}: {lines[0][:100]}{'...' if len(lines[0]) > 100 else ''}"
        print(f"distcheck: the probe's one-pass kernel was not built ({failure}); the probe will use "
              "numpy: the same digests, about 3x slower", file=sys.stderr)
        return False

    def copy_file(self, infile, outfile, *args, **kwargs):  # noqa: ANN001, ANN201 (distutils' signature)
        """Into the source tree (an editable install): a new file in place of the old
        library, never the old one overwritten, which would crash a running process that
        has it loaded."""
        if not self.dry_run and os.path.isfile(outfile) and os.path.abspath(infile) != os.path.abspath(outfile):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)

setup(
    ext_modules=[Extension(
        "distcheck.recording._fused",
        sources=["distcheck/recording/fused.c"],
        depends=["distcheck/recording/xxhash/xxhash.h"],
        define_macros=[("DISTCHECK_FUSED_SOURCE", f'"{source_key()}"')],
        extra_compile_args=FLAGS,
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
