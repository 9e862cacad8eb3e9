"""Start-up hook: record MindSpore's `Model.train` without editing the training script.

Python imports `sitecustomize` at start-up from the first directory of `sys.path` that
has one. Putting this directory first on `PYTHONPATH` (with `DISTCHECK_RUN_DIR` set)
therefore loads it in every process of the job, msrun's scheduler included. It only
registers an import hook: nothing is imported, written or printed until the script
itself imports MindSpore. The `sitecustomize` this file hides, if any, runs afterwards.
"""

import os
import sys


def _install() -> None:
    if not os.environ.get("DISTCHECK_RUN_DIR"):
        return
    _node_id_from_mpi()
    try:
        from distcheck.mindspore.attach import install_import_hook
    except Exception as exc:  # a broken install must not stop the user's job
        print(f"distcheck: probe not installed: cannot import distcheck: {exc}", file=sys.stderr, flush=True)
        return
    install_import_hook()


def _node_id_from_mpi() -> None:
    """Under `distcheck launch --launcher mpirun`, MindSpore's node id is the MPI rank.

    Without it MindSpore numbers the workers in the order they reach the scheduler, which
    need not match the MPI ranks that the probes use to talk.
    """
    if os.environ.get("DISTCHECK_COMM") != "mpi" or os.environ.get("MS_ROLE") != "MS_WORKER":
        return
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")
    if rank is not None:
        os.environ.setdefault("MS_NODE_ID", rank)
        os.environ.setdefault("RANK_ID", rank)


def _chain() -> None:
    """Run the next `sitecustomize` on `sys.path`, the one Python would have loaded."""
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = module_from_spec(spec)
    spec.loader.exec_module(module)  # its errors surface as Python reports a failing sitecustomize


_install()
_chain()
