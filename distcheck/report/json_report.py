"""The machine-readable report: ``{"schema": "distcheck.report/1", "run", "findings", "notes", "errors"}``."""
from __future__ import annotations

import json

from distcheck.analysis import Analysis

SCHEMA = "distcheck.report/1"


def render_json(analysis: Analysis) -> str:
    doc = {
        "schema": SCHEMA,
        "run": analysis.run,
        "findings": [f.to_json() for f in analysis.findings],
        "notes": [n.to_json() for n in analysis.notes],
        "errors": [{"path": e.path, "rank": e.rank, "message": e.message} for e in analysis.errors],
    }
    return json.dumps(doc, indent=2, default=_plain) + "\n"


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
