"""Exit codes of the ``distcheck`` command, and the error that means "exit 2".

A leaf module: the command line, the launcher and the reports all import it.
"""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0  #: nothing at or above ``--fail-on``
    FINDINGS = 1  #: findings at or above ``--fail-on`` (default: error)
    INPUT = 2  #: usage, configuration or input errors (the readable ranks are still analysed)
    JOB_FAILED = 3  #: ``launch``: the job failed, or ``--stall-timeout`` stopped it
    INTERRUPTED = 130  #: ``launch`` was stopped by SIGINT (128 + 2); the report still covers the run
    TERMINATED = 143  #: ``launch`` was stopped by SIGTERM (128 + 15); the report still covers the run


class UsageError(Exception):
    """A problem with the command line or its inputs; the message says what to do."""
