"""Root cause first: link findings that one earlier finding explains.

Each link says: a finding of code B is a symptom of a finding of code A when A comes
first (or at the same step), no more than a window of steps before B, and, where both
name parameters, A's cover B's. The text report then shows B under A, and the JSON
carries ``caused_by``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from distcheck.findings import Finding

#: Recorded steps within which a cause may explain a later symptom: a loss that ran away
#: at step 261 does not explain a gradient spike at step 8,603.
LINK_WINDOW = 100

# symptom code -> causes that can explain it, most specific first
LINKS: dict[str, tuple[str, ...]] = {
    "loss_nonfinite": ("input_nonfinite", "init_poor", "loss_diverging", "update_ratio_large"),
    "loss_diverging": ("init_poor", "update_ratio_large", "loss_nonfinite", "data_not_shuffled"),
    "grad_exploding": ("input_nonfinite", "init_poor", "loss_nonfinite", "loss_diverging", "update_ratio_large"),
    "update_ratio_large": ("init_poor", "init_all_zero", "input_not_normalized"),
    "loss_not_decreasing": ("weights_not_updated", "loss_diverging", "loss_nonfinite", "update_ratio_large",
                            "data_not_shuffled"),
    "weights_not_updated": ("frozen_by_accident",),
    "update_ratio_small": ("grad_vanishing",),
    "grad_vanishing": ("init_poor", "activation_saturated", "dead_relu", "init_all_zero"),
    "dead_relu": ("update_ratio_large", "loss_nonfinite", "input_not_normalized"),
}
#: Links that hold only when the cause came strictly first (they can go either way).
STRICT = {("loss_diverging", "loss_nonfinite")}
#: Links that hold only when the cause names every parameter the symptom names.
COVERING = {("weights_not_updated", "frozen_by_accident"), ("update_ratio_small", "grad_vanishing"),
            ("update_ratio_large", "init_all_zero")}
#: Links that hold only when the cause covers every trainable parameter (it was global).
GLOBAL = {("loss_not_decreasing", "weights_not_updated")}


def link_causes(findings: list[Finding], trainable: Optional[set[str]] = None,
                window: int = LINK_WINDOW) -> list[Finding]:
    """Set ``caused_by`` on each finding that an earlier one explains, within ``window`` steps."""
    out = []
    for f in findings:
        if f.caused_by is not None or f.code not in LINKS:
            out.append(f)
            continue
        cause = _cause(f, findings, trainable or set(), window)
        out.append(replace(f, caused_by=cause.key) if cause is not None else f)
    return out


def _cause(symptom: Finding, findings: list[Finding], trainable: set[str], window: int) -> Optional[Finding]:
    for code in LINKS[symptom.code]:
        for cause in findings:
            if cause.code != code or cause is symptom:
                continue
            if cause.step is not None and symptom.step is not None and (
                    cause.step > symptom.step or symptom.step - cause.step > window
                    or (cause.step == symptom.step and (symptom.code, code) in STRICT)):
                continue
            if (symptom.code, code) in COVERING and not set(symptom.params) <= set(cause.params):
                continue
            if (symptom.code, code) in GLOBAL and not trainable <= set(cause.params):
                continue
            return cause
    return None
