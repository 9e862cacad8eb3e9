"""The framework-free half of a probe: options, step rows, the online check, the
heartbeat, and how a recording ends. Only ``distcheck.mindspore`` sits above it."""
from distcheck.recording.online import ConsistencyError
from distcheck.recording.options import ENV_RUN_DIR, ProbeOptions, log, run_dir_from_env
from distcheck.recording.recorder import ProbeError, Recorder
from distcheck.store.schema import ParamInfo, Phase

__all__ = ["ConsistencyError", "ENV_RUN_DIR", "ParamInfo", "Phase", "ProbeError", "ProbeOptions", "Recorder",
           "log", "run_dir_from_env"]
