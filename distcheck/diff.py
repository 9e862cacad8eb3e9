"""``distcheck diff REFERENCE RUN``: where a run parts from its reference, and what kind of difference it is.

For the same model on 1 device and on N ranks (or another layout), before and after a
change, or two ports of one model. The comparison, in the report's order:

1. comparability (notes first): the parameters both hold alike (names, shapes, dtypes;
   sharded parameters rebuilt whole), the steps both recorded (runs recorded with
   different ``--every`` are aligned on the steps both have), and the global batch at the
   first step (:mod:`distcheck.reference.batches`): ``diff_structure``, ``diff_batch``;
2. what kind of difference: one factor in every gradient (``diff_factor``,
   :mod:`distcheck.reference.factors`), BatchNorm over local batches
   (``diff_batchnorm``, :mod:`distcheck.reference.batchnorm`);
3. where the runs part beyond the envelope of rounding noise
   (:mod:`distcheck.reference.envelope`; measured from a noise run with ``noise``, a
   default per dtype without, fixed with ``rtol``/``atol``): the loss (mean over ranks),
   each gradient's L2 norm, each parameter's L2 norm, mean and update norm:
   ``diff_loss``, ``diff_grad``, ``diff_param``, linked to the finding of step 2 that
   explains them. A drift within the envelope is a note, never a finding.

The findings go through the same reports and exit codes as ``analyze``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from distcheck.analysis import Analysis
from distcheck.analysis.run import InputError, Run, load_run
from distcheck.findings import Finding, Note, name_list
from distcheck.reference import envelope as env
from distcheck.reference.batches import compare_batches
from distcheck.reference.batchnorm import explains as batchnorm_explains
from distcheck.reference.factors import describe as describe_factor
from distcheck.reference.factors import describe_update, find_factor, find_update_factor
from distcheck.reference.layers import first_layer
from distcheck.reference.pieces import name_factor, scaled_piece
from distcheck.reference.sides import Side, SideError, load_side
from distcheck.rules.registry import finding
from distcheck.store import schema

_L2, _MEAN, _DELTA = (schema.STAT_COLUMNS.index(c) for c in ("l2", "mean", "delta_l2"))
_PARAM_STATS = ((_L2, "L2 norm"), (_MEAN, "mean"), (_DELTA, "update norm"))


def diff(run_a: str, run_b: str, rtol: Optional[float] = None, atol: Optional[float] = None,
         noise: Optional[str] = None, rank_a: Optional[int] = None, rank_b: Optional[int] = None,
         rename: Optional[dict[str, str]] = None) -> Analysis:
    """Compare ``run_b`` with the reference ``run_a``. ``noise``: a noise run of the
    reference (``launch --perturb``) for a measured envelope; ``rtol``/``atol``: a fixed
    tolerance instead; ``rank_a``/``rank_b``: the rank that speaks for each run's
    replicated parameters; ``rename``: reference name -> run name, for parameters named
    differently."""
    runs = [load_run([run_a]), load_run([run_b])] + ([load_run([noise])] if noise else [])
    try:
        errors = [e for r in runs for e in r.errors]
        findings: list[Finding] = []
        notes: list[Note] = []
        tolerance = "none"
        if all(r.readers for r in runs):
            try:
                inverse = {v: k for k, v in (rename or {}).items()}
                ref, run = load_side(runs[0], rank_a), load_side(runs[1], rank_b, rename=inverse)
                noise_side = load_side(runs[2]) if noise else None
            except SideError as exc:
                errors.append(InputError(str(exc).split(":")[0], str(exc)))
            else:
                findings, notes, tolerance = compare(ref, run, noise_side, rtol, atol)
        summary = {"dirs": [run_a, run_b], "kind": "diff",
                   "world_size": max(runs[0].world_size, runs[1].world_size),
                   "ranks_found": sorted(set(runs[0].ranks) | set(runs[1].ranks))
                   if runs[0].readers and runs[1].readers else [],
                   "parallel_mode": runs[0].meta("parallel_mode"), "tolerance": tolerance,
                   "ranks": {}, "runs": [_describe(runs[0]), _describe(runs[1])]}
        if rtol is not None or atol is not None:
            summary.update(rtol=rtol or 0.0, atol=atol or 0.0)
        return Analysis(summary, findings, errors, notes)
    finally:
        for r in runs:
            r.close()


def _describe(run: Run) -> dict:
    steps = [int(r.steps[-1]) for r in run.readers.values() if r.n_steps]
    return {"dir": run.dirs[0], "world_size": run.world_size, "ranks_found": run.ranks,
            "last_step": max(steps) if steps else None}


def compare(ref: Side, run: Side, noise: Optional[Side], rtol: Optional[float], atol: Optional[float]
            ) -> tuple[list[Finding], list[Note], str]:
    """Findings, notes (comparability first) and a description of the tolerance used."""
    findings: list[Finding] = []
    notes: list[Note] = []
    same, odd = _alike(ref, run)
    steps, i_ref, i_run = np.intersect1d(ref.steps, run.steps, return_indices=True)
    notes.append(Note("diff_comparable", (), _comparability(ref, run, same, odd, steps)))
    if odd:
        findings.append(finding("diff_structure", None, [], odd,
                                f"{len(odd)} parameter(s) are not held alike by both runs: {name_list(odd)}. "
                                "They were left out of the comparison."))
    if not len(steps):
        return findings, notes, "none"
    batch = compare_batches(ref, run)
    notes.append(Note("diff_batch", (), f"Global batch: {batch.message}" if batch.same is not False
                      else "Global batch: differs (see diff_batch)."))
    root: Optional[Finding] = None
    if batch.same is False:
        root = finding("diff_batch", batch.step, [], [], batch.message[0].upper() + batch.message[1:])
        findings.append(root)
    cols_ref = np.array([ref.index(n) for n in same], int)
    cols_run = np.array([run.index(n) for n in same], int)
    series = _series(ref, run, noise, i_ref, i_run, cols_ref, cols_run, steps)
    bounds, tolerance = _bounds(series, ref, cols_ref, steps, noise, rtol, atol)
    if noise is not None and noise.meta.get("perturbed") is None:
        notes.append(Note("diff_envelope", (), f"{noise.dir} was not recorded with --perturb: its drift from "
                          "the reference is whatever else differs between the runs (if nothing, only the "
                          "floor of 64 ulps remains)."))
    notes.append(Note("diff_envelope", (), f"Tolerance: {tolerance}."))
    factor = find_factor(steps, series["grad l2"][0], series["grad l2"][1], series["loss"][0], series["loss"][1])
    if factor is not None and root is None:
        root = finding("diff_factor", factor.step, [], same,
                       describe_factor(factor, len(ref.data_ranks), len(run.data_ranks),
                                       run.meta.get("gradients_mean")),
                       detail={"factor": factor.value, "loss_ratio": factor.loss_ratio})
        findings.append(root)
    if root is None:
        update = find_update_factor(steps, series["grad l2"][0], series["grad l2"][1],
                                    series["param update norm"][0], series["param update norm"][1])
        if update is not None:
            root = finding("diff_update_factor", update.step, [], same,
                           describe_update(update, len(ref.data_ranks), len(run.data_ranks)),
                           detail={"factor": update.value})
            findings.append(root)
    if root is None:
        root = _scaled_pieces(ref, run, same, steps, i_ref, i_run)
        if root is not None:
            findings.append(root)
    partings = _partings(series, bounds, steps, same)
    if partings and root is None:
        why = batchnorm_explains(ref, run)
        if why is not None:
            root = finding("diff_batchnorm", min(f.step for f in partings), [], [], why)
            findings.append(root)
    layer, layer_note = _forward_pass(ref, run, noise, i_ref, i_run, steps, rtol, atol, partings)
    if layer is not None:
        partings.insert(0, layer)
    if layer_note is not None:
        notes.append(layer_note)
    if root is not None:
        partings = [_caused_by(f, root) for f in partings]
    findings.extend(partings)
    drift = _drift_start(series, bounds, steps)
    first_error = min((f.step for f in partings), default=None)
    if drift is not None and (first_error is None or drift < first_error):
        notes.append(Note("diff_drift", (), f"The runs drift apart by rounding from step {drift}, within the "
                          f"{'measured ' if noise is not None else ''}envelope"
                          f"{' until step ' + str(first_error) if first_error is not None else ''}."))
    return findings, notes, tolerance


def _forward_pass(ref: Side, run: Side, noise: Optional[Side], i_ref: np.ndarray, i_run: np.ndarray,
                  steps: np.ndarray, rtol: Optional[float], atol: Optional[float], partings: list[Finding]
                  ) -> tuple[Optional[Finding], Optional[Note]]:
    """diff_activation, the first layer whose output differs, when the forward pass parts
    no later than the loss and gradients (:mod:`distcheck.reference.layers`); else a note
    that it agreed where they parted. Nothing without activation taps in both runs."""
    taps = [t for t in ref.activations if t in run.activations]
    if not taps or ref.act_stats is None or run.act_stats is None:
        return None, None
    a = ref.act_stats[i_ref][:, [ref.activations.index(t) for t in taps]]
    b = run.act_stats[i_run][:, [run.activations.index(t) for t in taps]]
    noise_acts = None
    if noise is not None and noise.act_stats is not None and all(t in noise.activations for t in taps):
        rows = np.searchsorted(noise.steps, steps, side="right") - 1
        noise_acts = noise.act_stats[np.maximum(rows, 0)][:, [noise.activations.index(t) for t in taps]]
        noise_acts[rows < 0] = np.nan
    eps = env.epsilon("float32")

    def bounds_of(name: str, values: np.ndarray, scale: np.ndarray) -> env.Bounds:
        if rtol is not None or atol is not None:
            return env.fixed(scale, rtol or 0.0, atol or 0.0)
        if noise_acts is not None:
            col = schema.ACT_COLUMNS.index("mean" if name == "mean output" else "absmax")
            return env.measured(values, noise_acts[..., col], scale, eps)
        return env.default(steps, scale, eps)

    parting = first_layer(steps, taps, a, b, bounds_of)
    # Forward pass s precedes gradients s and the update to the parameters of step s.
    later = [f.step for f in partings if f.code in ("diff_loss", "diff_grad")]
    later += [f.step + 1 for f in partings if f.code == "diff_param"]
    first_other = min(later, default=None)
    if parting is not None and (first_other is None or parting.step <= first_other):
        before = taps[:taps.index(parting.taps[0])]
        message = (f"The forward pass parts at step {parting.step}, before any gradient: "
                   f"the first layer whose output differs is {parting.taps[0]} (in the model's order"
                   f"{'; the layers before it agree: ' + name_list(before) if before else ''}): "
                   f"{parting.statistic} {parting.run:.6g} against {parting.ref:.6g} in the reference, "
                   f"{_times(parting.ref, parting.run, parting.allowed)}; share of zero outputs "
                   f"{parting.zero_run:.4g} against {parting.zero_ref:.4g}.")
        if len(parting.taps) > 1:
            message += f" Also differing at that step: {name_list(parting.taps[1:])}."
        return finding("diff_activation", parting.step, [], [], message,
                       detail={"layer": parting.taps[0], "layers": parting.taps}), None
    if first_other is not None:
        k = int(np.searchsorted(steps, first_other))
        if k < len(steps) and steps[k] == first_other and np.isfinite(a[k]).any() and np.isfinite(b[k]).any():
            return None, Note("diff_activation", (), f"The forward pass agrees at step {first_other}, where the "
                              f"runs part: every layer's output ({name_list(taps)}) is within the envelope, so the "
                              "difference starts in the backward pass, the gradient reduction or the update.")
    return None, None


def _scaled_pieces(ref: Side, run: Side, same: list[str], steps: np.ndarray, i_ref: np.ndarray,
                   i_run: np.ndarray) -> Optional[Finding]:
    """diff_shard: the run's sharded parameters whose gradients, at the first step both
    recorded gradients, differ from the reference's by a factor in one shard or in all
    (:mod:`distcheck.reference.pieces`)."""
    names = [n for n in same if n in run.pieces]
    if not names:
        return None
    have = np.flatnonzero(np.isfinite(ref.grads[i_ref][..., _L2]).any(axis=1)
                          & np.isfinite(run.grads[i_run][..., _L2]).any(axis=1))
    if not len(have):
        return None
    k = int(have[0])
    stories: dict[tuple, list[str]] = {}
    for name in names:
        pieces = run.pieces[name]
        found = scaled_piece(ref.grads[i_ref[k], ref.index(name)], pieces.grads[i_run[k]], pieces.sizes)
        if found is not None:
            group = None if found.shard is None else pieces.groups[found.shard]
            key = (group, round(found.factor, 3), len(pieces.groups), len(pieces.groups[0]))
            stories.setdefault(key, []).append(name)
    if not stories:
        return None
    step, texts, ranks, detail = int(steps[k]), [], set(), []
    for (group, factor, n_shards, group_size), params in stories.items():
        if group is None:
            text = (f"{name_list(params)}: every shard's gradient is {factor:g}x the reference's (the whole parameter, "
                    f"rebuilt from {n_shards} shards, by its L2 norm, mean, minimum and maximum). ")
            text += name_factor(factor, group_size, n_shards)
        else:
            ranks.update(group)
            holders = ", ".join(map(str, group))
            text = (f"{name_list(params)}: one shard differs, the one held by ranks {holders} "
                    f"(its replica group): its gradient is {factor:g}x the reference's piece, and the other "
                    f"{n_shards - 1} shard(s) agree (the whole parameter rebuilt from {n_shards} shards, by its L2 "
                    "norm, mean, minimum and maximum). ")
            text += name_factor(factor, len(group), n_shards)
        texts.append(text)
        detail.append({"params": params, "factor": factor, "shard_ranks": list(group) if group else None})
    message = (f"At step {step}, where the weights are still those of step 0, sharded parameters' gradients differ "
               "from the reference's by a factor. " + " ".join(texts))
    params = [p for _, ps in stories.items() for p in ps]
    return finding("diff_shard", step, sorted(ranks), params, message, detail={"pieces": detail})


def _alike(ref: Side, run: Side) -> tuple[list[str], list[str]]:
    """Parameters held alike (name, size or shape, dtype) by both, and the others."""
    same = []
    for i, name in enumerate(ref.names):
        if name not in run.names:
            continue
        j = run.index(name)
        shape_ok = (ref.sizes[i] == run.sizes[j] if name in ref.sharded or name in run.sharded
                    else ref.shapes[i] == run.shapes[j])
        if shape_ok and ref.dtypes[i] == run.dtypes[j]:
            same.append(name)
    odd = sorted((set(ref.names) | set(run.names)) - set(same))
    return same, odd


def _comparability(ref: Side, run: Side, same: list[str], odd: list[str], steps: np.ndarray) -> str:
    held = (f"the same {len(same)} parameter(s), shapes and dtypes" if not odd else
            f"{len(same)} parameter(s) alike, {len(odd)} not (diff_structure)")
    if ref.sharded or run.sharded:
        held += f"; rebuilt whole from shards: {name_list(sorted(set(ref.sharded) | set(run.sharded)))}"
    if np.array_equal(ref.steps, run.steps):
        recorded = f"both recorded the same {len(steps)} step(s) {_span(steps)}"
    else:
        recorded = (f"{ref.dir} recorded {len(ref.steps)} step(s) {_span(ref.steps)}, {run.dir} "
                    f"{len(run.steps)} {_span(run.steps)}: compared on the {len(steps)} both recorded")
    return (f"Comparable: {held}; {recorded}. Compared: rank {ref.rank} of {ref.dir} ({ref.world_size} rank(s)) "
            f"with rank {run.rank} of {run.dir} ({run.world_size} rank(s)).")


def _span(steps: np.ndarray) -> str:
    return f"({int(steps[0])}..{int(steps[-1])})" if len(steps) else "(none)"


def _series(ref: Side, run: Side, noise: Optional[Side], i_ref, i_run, cols_ref, cols_run, steps
            ) -> dict[str, tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]]:
    """Each judged series as (reference, run, noise or None, scale), steps first."""
    def noise_rows(values: np.ndarray, cols: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if noise is None:
            return None
        # The last noise row at or before each step: the envelope is monotone in step.
        rows = np.searchsorted(noise.steps, steps, side="right") - 1
        picked = values[np.maximum(rows, 0)]
        if cols is not None:
            picked = picked[:, cols]
        picked = picked.astype(np.float64)
        picked[rows < 0] = np.nan
        return picked

    noise_cols = None if noise is None else np.array([noise.index(ref.names[c]) for c in cols_ref], int)
    ref_p, run_p = ref.params[i_ref][:, cols_ref], run.params[i_run][:, cols_run]
    ref_g, run_g = ref.grads[i_ref][:, cols_ref], run.grads[i_run][:, cols_run]
    sizes = np.array([ref.sizes[c] for c in cols_ref], np.float64)
    rms = ref_p[..., _L2] / np.sqrt(np.maximum(sizes, 1))
    out = {"loss": (ref.loss[i_ref], run.loss[i_run], noise_rows(noise.loss, None) if noise else None,
                    np.abs(ref.loss[i_ref]))}
    out["grad l2"] = (ref_g[..., _L2], run_g[..., _L2],
                      noise_rows(noise.grads[..., _L2], noise_cols) if noise else None, np.abs(ref_g[..., _L2]))
    # An update norm is the change since the side's previous recorded step: comparable only
    # where both recorded the same previous step (runs recorded with different --every).
    same_span = _previous(ref.steps, i_ref) == _previous(run.steps, i_run)
    for col, label in _PARAM_STATS:
        scale = np.fmax(np.abs(ref_p[..., col]), rms) if col == _MEAN else np.abs(ref_p[..., col])
        if col == _DELTA:
            run_p = run_p.copy()
            run_p[~same_span, :, _DELTA] = np.nan
        out[f"param {label}"] = (ref_p[..., col], run_p[..., col],
                                 noise_rows(noise.params[..., col], noise_cols) if noise else None, scale)
    return out


def _previous(steps: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The step recorded before each of ``rows`` of ``steps`` (-1 for the first)."""
    return np.where(rows > 0, steps[np.maximum(rows - 1, 0)], -1)


def _bounds(series: dict, ref: Side, cols_ref: np.ndarray, steps: np.ndarray, noise: Optional[Side],
            rtol: Optional[float], atol: Optional[float]) -> tuple[dict[str, env.Bounds], str]:
    eps_params = np.array([env.epsilon(ref.dtypes[c]) for c in cols_ref]) if len(cols_ref) else np.array([])
    eps_loss = float(np.max(eps_params)) if len(eps_params) else env.epsilon("float32")
    out = {}
    for key, (a, _, n, scale) in series.items():
        eps = eps_loss if key == "loss" or not len(eps_params) else eps_params  # none alike: nothing to judge
        if rtol is not None or atol is not None:
            out[key] = env.fixed(scale, rtol or 0.0, atol or 0.0)
        elif n is not None:
            out[key] = env.measured(a, n, scale, eps, pool_axis=None if key == "loss" else 1)
        else:
            out[key] = env.default(steps, scale, eps)
    if rtol is not None or atol is not None:
        return out, f"fixed, |a - b| <= {atol or 0:g} + {rtol or 0:g} x |reference|"
    dtypes = sorted({ref.dtypes[c] for c in cols_ref}) or ["float32"]
    if noise is not None:
        return out, (f"measured from the noise run {noise.dir}: {env.SAFETY:g}x its running largest drift from "
                     f"the reference, at least {env.FLOOR_ULPS} ulps ({', '.join(dtypes)})")
    full = env.saturation_step(steps, eps_loss)
    text = (f"the default for {', '.join(dtypes)} (no noise run): {env.FLOOR_ULPS} ulps at step 0, doubling every "
            f"{env.DOUBLING_STEPS:g} steps")
    if full is not None:
        text += (f"; it reaches 100% at step {full}, so later steps are not judged. Record a noise run "
                 "(distcheck launch --perturb) of the reference and pass it with --noise to judge them")
    return out, text


def _partings(series: dict, bounds: dict, steps: np.ndarray, same: list[str]) -> list[Finding]:
    """diff_loss, diff_grad, diff_param at the first step each series is outside its envelope."""
    out = []
    ref, run, _, _ = series["loss"]
    far = env.outside(ref, run, bounds["loss"])
    if far.any():
        k = int(np.argmax(far))
        out.append(finding("diff_loss", int(steps[k]), [], [],
                           f"The losses part at step {int(steps[k])}: {run[k]:.6g} against {ref[k]:.6g} in the "
                           f"reference (mean over ranks), {_times(ref[k], run[k], bounds['loss'].allowed[k])}."))
    for code, keys, noun in (("diff_grad", ("grad l2",), "gradients"),
                             ("diff_param", tuple(f"param {label}" for _, label in _PARAM_STATS), "parameters")):
        first = None
        for key in keys:
            ref, run, _, _ = series[key]
            far = env.outside(ref, run, bounds[key])
            rows = np.flatnonzero(far.any(axis=1))
            if len(rows) and (first is None or rows[0] < first[0]):
                first = (int(rows[0]), key, far[rows[0]])
        if first is None:
            continue
        k, key, columns = first
        ref, run, _, _ = series[key]
        names = [same[c] for c in np.flatnonzero(columns)]
        c = int(np.flatnonzero(columns)[0])
        what = "gradient L2 norm" if key == "grad l2" else key.split(" ", 1)[1]
        out.append(finding(code, int(steps[k]), [], names,
                           f"The {noun} part at step {int(steps[k])} in {len(names)} parameter(s), first "
                           f"{name_list(names)}: {what} {run[k, c]:.6g} against {ref[k, c]:.6g} in the reference, "
                           f"{_times(ref[k, c], run[k, c], bounds[key].allowed[k, c])}."))
    return out


def _times(ref: float, run: float, allowed: float) -> str:
    diff = abs(run - ref)
    if allowed > 0:
        return f"a difference of {diff:.3g}, {diff / allowed:.3g}x the envelope ({allowed:.3g})"
    return f"a difference of {diff:.3g} where none is allowed"


def _drift_start(series: dict, bounds: dict, steps: np.ndarray) -> Optional[int]:
    """The first step where the runs differ beyond the floor of rounding, in any series."""
    first = None
    for key, (ref, run, _, _) in series.items():
        with np.errstate(invalid="ignore"):
            beyond = np.abs(np.asarray(run, np.float64) - ref) > bounds[key].floor
        rows = np.flatnonzero(beyond.reshape(len(steps), -1).any(axis=1))
        if len(rows) and (first is None or rows[0] < first):
            first = int(rows[0])
    return int(steps[first]) if first is not None else None


def _caused_by(f: Finding, root: Finding) -> Finding:
    from dataclasses import replace

    return replace(f, caused_by=root.key)
