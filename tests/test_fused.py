"""The probe's one-pass kernel as installed: built by setup.py at install time, loaded
from the package's own directory only, never compiled at run time, and the numpy path
where it was not built."""
import ctypes
import os
import runpy
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest

from distcheck.recording import fused, summaries, summary_threads
from distcheck.store.schema import ParamInfo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = shutil.which("cc") or shutil.which("gcc")


@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader as in a new process: nothing tried, nothing loaded."""
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "_why_not", "")
    monkeypatch.setattr(fused, "_kernels", {})
    return fused


def test_the_kernel_built_at_install_time_is_loaded_from_the_package_directory():
    lib = fused.library()
    assert lib is not None, fused.why_not()  # scripts/setup-env installs distcheck with a C compiler
    assert lib._name == fused.LIBRARY
    assert os.path.dirname(fused.LIBRARY) == os.path.dirname(os.path.abspath(fused.__file__))
    lib.fused_source.restype = ctypes.c_char_p
    assert lib.fused_source().decode() == fused.source_key()  # built from the fused.c beside it


def _recording_compilers(bin_dir, calls):
    """``cc``, ``gcc``, ``clang`` and ``$CC`` that only note they were called."""
    bin_dir.mkdir()
    for name in ("cc", "gcc", "clang"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {calls}\nexit 1\n")
        script.chmod(0o755)
    return str(bin_dir / "cc")


def _plant(directory, marker):
    """A library in ``directory``, under every name the kernel had or has, whose loading
    writes ``marker``: another user's library in the shared temporary directory."""
    directory.mkdir(parents=True)
    source = directory / "planted.c"
    source.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void planted(void) {{\n'
                      f'    FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
                      'const char *fused_source(void) { return "planted"; }\n')
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(directory / "planted.so"), str(source)], check=True)
    for name in ("fused-" + "0" * 16 + ".so", os.path.basename(fused.LIBRARY)):
        shutil.copy(directory / "planted.so", directory / name)


@pytest.mark.skipif(CC is None, reason="no C compiler here to build the planted library")
@pytest.mark.parametrize("installed", [True, False], ids=["kernel-installed", "kernel-not-built"])
def test_the_loader_never_compiles_nor_loads_from_the_temporary_directory(installed, tmp_path, monkeypatch,
                                                                         fresh_loader):
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    marker, calls = tmp_path / "planted-code-ran", tmp_path / "compiler-calls"
    _plant(shared_tmp / f"distcheck-{os.getuid()}", marker)
    _plant(tmp_path / "cache" / "distcheck", marker)  # and in $DISTCHECK_CACHE / XDG_CACHE_HOME, as before
    monkeypatch.setenv("DISTCHECK_CACHE", str(tmp_path / "cache" / "distcheck"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", _recording_compilers(tmp_path / "bin", calls))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    if not installed:  # as after an install without a C compiler
        monkeypatch.setattr(fused, "LIBRARY", str(tmp_path / "site-packages" / os.path.basename(fused.LIBRARY)))
    loaded = []
    real_cdll = ctypes.CDLL
    monkeypatch.setattr(ctypes, "CDLL", lambda path, *a, **k: loaded.append(path) or real_cdll(path, *a, **k))

    lib = fused.library()

    assert not calls.exists(), calls.read_text()  # no compiler was run
    assert not marker.exists()  # no planted code ran
    assert loaded == ([fused.LIBRARY] if installed else [])
    if installed:
        assert lib is not None, fused.why_not()
    else:
        assert lib is None and "not built when distcheck was installed" in fused.why_not()
        assert fused.digest_and_summary(np.ones(10, np.float32)) is None


@pytest.mark.skipif(CC is None, reason="no C compiler here to build a library from other sources")
def test_a_library_built_from_other_sources_is_refused(tmp_path, monkeypatch, fresh_loader):
    stale = tmp_path / os.path.basename(fused.LIBRARY)
    subprocess.run([CC, "-O1", "-shared", "-fPIC", '-DDISTCHECK_FUSED_SOURCE="0123456789abcdef"', "-o", str(stale),
                    fused.SOURCES[0]], check=True)
    monkeypatch.setattr(fused, "LIBRARY", str(stale))
    assert fused.library() is None
    assert "built from another fused.c" in fused.why_not() and "reinstall" in fused.why_not()
    assert fused.digest_and_summary(np.ones(10, np.float32)) is None


def test_without_the_built_kernel_the_numpy_path_gives_the_same_digests(tmp_path, monkeypatch, fresh_loader):
    assert fused.library() is not None, fused.why_not()
    rng = np.random.default_rng(3)
    dtypes = ["float32", "float64", "float16", "float32"]
    infos = [ParamInfo(f"p{i}", (n,), d, True, True) for i, (n, d) in enumerate(zip((1, 4097, 70_001, 5), dtypes))]
    steps = [[rng.standard_normal(i.shape).astype(i.dtype) for i in infos] for _ in range(2)]

    def record():
        previous = summaries.Previous()
        return [summaries.summarise(infos, [a.copy() for a in step], "param", previous=previous) for step in steps]

    with_kernel = record()
    monkeypatch.setattr(fused, "_tried", False)
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "LIBRARY", str(tmp_path / "never-built.so"))
    logged = []
    monkeypatch.setattr(summary_threads, "log", logged.append)
    summary_threads.warm_up()  # as the recorder does when it starts
    deadline = time.monotonic() + 30
    while not logged and time.monotonic() < deadline:  # the warm-up runs on the summaries' threads
        time.sleep(0.01)
    assert fused.library() is None
    assert len(logged) == 1 and "numpy" in logged[0] and "not built" in logged[0]  # one line says why
    with_numpy = record()
    for (d1, s1), (d2, s2) in zip(with_kernel, with_numpy):
        assert np.array_equal(d1, d2)  # the digests, bit for bit
        np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-6)


def _setup_py(monkeypatch) -> dict:
    """What setup.py hands to setuptools.setup, without running it."""
    import setuptools

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, "setup.py"))
    return captured


def _build_ext(monkeypatch, tmp_path, compiler: str):
    from setuptools import Distribution

    args = _setup_py(monkeypatch)
    monkeypatch.setenv("CC", compiler)
    dist = Distribution({"name": "distcheck", "ext_modules": args["ext_modules"], "cmdclass": args["cmdclass"]})
    command = dist.get_command_obj("build_ext")
    command.build_lib, command.build_temp = str(tmp_path / "lib"), str(tmp_path / "temp")
    command.ensure_finalized()
    command.run()
    return command


@pytest.mark.skipif(CC is None, reason="no C compiler here")
def test_setup_builds_the_kernel_without_native_flags_and_from_the_installed_sources(tmp_path, monkeypatch,
                                                                                     fresh_loader):
    wrapper, calls = tmp_path / "cc", tmp_path / "cc-calls"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {CC} "$@"\n')
    wrapper.chmod(0o755)
    _build_ext(monkeypatch, tmp_path, str(wrapper))
    built = tmp_path / "lib" / "distcheck" / "recording" / os.path.basename(fused.LIBRARY)
    assert built.is_file()
    compile_line = calls.read_text().splitlines()[0]
    assert "-ffp-contract=off" in compile_line and "native" not in compile_line  # the same bits on any CPU
    monkeypatch.setattr(fused, "LIBRARY", str(built))
    assert fused.library() is not None, fused.why_not()
    (low, high), _ = fused.digest_and_summary(np.arange(1000, dtype=np.float32))
    import xxhash

    assert low | (high << 64) == xxhash.xxh3_128_intdigest(np.arange(1000, dtype=np.float32).tobytes())


def test_setup_goes_on_without_a_compiler_and_says_so(tmp_path, monkeypatch, capfd):
    command = _build_ext(monkeypatch, tmp_path, str(tmp_path / "no-such-cc"))
    assert command.extensions == []  # nothing left for setuptools to copy or list
    assert not (tmp_path / "lib").exists() or not list((tmp_path / "lib").rglob("_fused*"))
    err = capfd.readouterr().err
    assert "the probe's one-pass kernel was not built" in err and "numpy" in err


def _outputs(lib_path: str, arrays: dict) -> list:
    lib = ctypes.CDLL(lib_path)
    results = []
    for name, array in arrays.items():
        kernel = getattr(lib, f"{name}_digest_summary")
        kernel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
        for keep in (False, True):
            kept = np.roll(array, 1) if keep else None  # a different "previous" copy
            out, words = np.zeros(5), np.zeros(2, np.uint64)
            kernel(array.ctypes.data, None if kept is None else kept.ctypes.data, array.size, out.ctypes.data,
                   words.ctypes.data)
            results.append((name, keep, out.tobytes(), words.tobytes()))
    return results


@pytest.mark.skipif(CC is None or os.uname().machine != "x86_64", reason="needs a C compiler on x86-64")
def test_the_statistics_are_the_same_bits_whatever_the_simd_width(tmp_path):
    """The installed library (cloned for AVX2 and AVX-512, the clone this CPU supports)
    against the same source built for the baseline x86-64 (SSE2 only) and for this CPU:
    without fused multiply-adds, every width gives the same bits."""
    assert fused.library() is not None, fused.why_not()
    rng = np.random.default_rng(5)
    wide = rng.standard_normal(100_003) * 7 + 3
    arrays = {"f32": wide.astype(np.float32), "f64": wide, "f16": wide.astype(np.float16),
              "bf16": (wide.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)}
    installed = _outputs(fused.LIBRARY, arrays)
    for flags in (["-DDISTCHECK_NO_CLONES", "-march=x86-64"], ["-DDISTCHECK_NO_CLONES", "-march=native"]):
        built = tmp_path / f"fused{len(list(tmp_path.iterdir()))}.so"
        subprocess.run([CC, "-O3", "-fno-fast-math", "-ffp-contract=off", *flags, "-shared", "-fPIC", "-o",
                        str(built), fused.SOURCES[0]], check=True)
        assert _outputs(str(built), arrays) == installed, flags
