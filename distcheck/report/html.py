"""One self-contained HTML page: the findings, and the plots a person would rather look
at than read. Plots are drawn with matplotlib (``pip install matplotlib``) and embedded
as PNG data, so the page needs no network and opens in any browser.

- where ranks agree: a rank x step map, per recorded step, of whether a rank's
  parameters equal the majority's (from the per-step rollup digests);
- the loss of every rank; the global gradient norm of every rank; the median update
  ratio |dw|/|w| of the weight matrices;
- the first divergence step (the earliest cross-rank error) is marked on every plot.

Long runs are thinned to at most ``MAX_POINTS`` steps, and at most ``MAX_RANKS`` ranks are
drawn one by one (the median over all ranks is drawn too).
"""
from __future__ import annotations

import base64
import html
import io
import warnings
from typing import Optional

import numpy as np

from distcheck.analysis import Analysis
from distcheck.analysis.run import Run, load_run
from distcheck.exits import UsageError
from distcheck.findings import Severity, name_list
from distcheck.report.verdict import verdict
from distcheck.store import schema
from distcheck.steps import rows_for, take
from distcheck.vote import outlier_mask

MAX_POINTS = 2000
MAX_RANKS = 16
_CROSS_RANK = ("init_mismatch", "grad_divergence", "param_divergence", "buffer_divergence", "data_not_sharded",
               "loss_nonfinite", "input_nonfinite", "structure_mismatch")


def render_html(analysis: Analysis) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("the HTML report draws its plots with matplotlib: pip install matplotlib") from None
    first = min((f.step for f in analysis.findings if f.code in _CROSS_RANK and f.severity is Severity.ERROR
                 and f.step is not None), default=None)
    plots: list[tuple[str, str]] = []
    if analysis.run.get("kind") != "diff":  # two runs: no per-rank plots
        run = load_run(analysis.run["dirs"])
        try:
            if run.readers:
                plots = _plots(run, first, plt)
        finally:
            run.close()
    return _page(analysis, plots, first)


# -- plots ---------------------------------------------------------------------------
def _plots(run: Run, first: Optional[int], plt) -> list[tuple[str, str]]:
    ranks = run.ranks
    shown = ranks if len(ranks) <= MAX_RANKS else [ranks[int(i)] for i in np.linspace(0, len(ranks) - 1, MAX_RANKS)]
    out = []
    agreement = _agreement(run)
    if agreement is not None:
        out.append(("Where ranks agree", _agreement_plot(agreement, first, plt)))
    series = {r: _series(run.readers[r]) for r in ranks}
    for title, key, label, log in (("Loss", "loss", "loss", False),
                                   ("Global gradient norm", "grad_norm", "gradient norm", True),
                                   ("Median update ratio |dw|/|w| of the weight matrices", "update_ratio",
                                    "update ratio", True)):
        if any(np.isfinite(series[r][key][1]).any() for r in ranks):
            out.append((title, _lines(series, shown, key, label, log, first, plt)))
    return out


def _series(reader) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loss, global gradient norm and median update ratio at the thinned steps, read in
    blocks of rows (only the statistics the plots need are kept)."""
    keep = _thin(len(reader.steps))
    has = reader.has()[keep]
    loss = np.where((has & schema.HAS_LOSS) != 0, reader.loss()[keep], np.nan)
    weights = np.array([i for i, p in enumerate(reader.params) if p.trainable and len(p.shape) >= 2], int)
    l2_col, delta_col = schema.STAT_COLUMNS.index("l2"), schema.STAT_COLUMNS.index("delta_l2")
    grad_l2, param_l2, delta = [], [], []
    for start in range(0, reader.n_steps, 1024):
        rows = keep[(keep >= start) & (keep < start + 1024)] - start
        grads = reader.stats("grad", start, start + 1024)[:, :, l2_col].astype(np.float64)
        params = reader.stats("param", start, start + 1024)[:, weights]
        previous = reader.stats("param", start - 1, start)[:, weights] if start else params[:1] * np.nan
        grad_l2.append(grads[rows])
        param_l2.append(np.concatenate([previous, params])[rows, :, l2_col])  # the row before each kept one
        delta.append(params[rows, :, delta_col])
    grad = np.sqrt(np.nansum(np.square(np.concatenate(grad_l2)), axis=1)) if grad_l2 else np.zeros(0)
    grad = np.where((has & schema.HAS_GRADS) != 0, grad, np.nan)
    ratio = np.full(len(keep), np.nan)
    if len(weights) and delta:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.concatenate(delta) / np.concatenate(param_l2)
        r[~np.isfinite(r)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step without any ratio
            ratio = np.nanmedian(r, axis=1)
    x = reader.steps[keep]
    return {"loss": (x, loss), "grad_norm": (x, grad), "update_ratio": (x, ratio)}


def _thin(n: int) -> np.ndarray:
    return np.arange(n) if n <= MAX_POINTS else np.unique(np.linspace(0, n - 1, MAX_POINTS).astype(int))


def _agreement(run: Run) -> Optional[tuple[np.ndarray, np.ndarray, list[int]]]:
    """(steps, (R, T) 0 agree / 1 differs / NaN absent, ranks) from the parameter rollups,
    when every rank replicates every parameter (a sharded run has no single majority)."""
    groups = {g for reader in run.readers.values() for g in (rec[0] if rec else None for rec in
                                                                reader.replica_groups())}
    everyone = tuple(range(run.world_size))
    if groups - {everyone, None} or len(run.readers) < 2:
        return None
    ranks = run.ranks
    steps = np.unique(np.concatenate([run.readers[r].steps for r in ranks]))
    if not len(steps):  # no rank recorded a step
        return None
    steps = steps[_thin(len(steps))]
    rollups = np.zeros((len(ranks), len(steps), 2), np.uint64)
    present = np.zeros((len(ranks), len(steps)), bool)
    for k, r in enumerate(ranks):
        reader = run.readers[r]
        idx = rows_for(reader.steps, steps)
        has = take(reader.has(), idx, 0)
        ok_rows = np.flatnonzero((has & schema.HAS_PARAMS) != 0)
        rows = idx[ok_rows]
        rollups[k, ok_rows] = reader.rollups("param")[rows]
        present[k, ok_rows] = True
    outliers, _ = outlier_mask(rollups, present)
    grid = np.where(present, outliers.astype(float), np.nan)
    return steps, grid, ranks


def _agreement_plot(agreement, first: Optional[int], plt) -> str:
    from matplotlib.colors import ListedColormap

    steps, grid, ranks = agreement
    fig, ax = plt.subplots(figsize=(9, 0.6 + min(6.0, 0.25 * len(ranks))))
    ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest",
              cmap=ListedColormap(["#4caf50", "#e53935"]), vmin=0, vmax=1,
              extent=(-0.5, len(steps) - 0.5, len(ranks) - 0.5, -0.5))
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(10, len(steps))).astype(int))
    ax.set_xticks(ticks, [str(int(steps[t])) for t in ticks])
    rank_ticks = np.unique(np.linspace(0, len(ranks) - 1, min(16, len(ranks))).astype(int))
    ax.set_yticks(rank_ticks, [str(ranks[t]) for t in rank_ticks])
    ax.set_xlabel("recorded step (green: equals the majority, red: differs, blank: not recorded)")
    ax.set_ylabel("rank")
    if first is not None and len(steps):
        ax.axvline(int(np.searchsorted(steps, first)), color="black", linestyle="--", linewidth=1)
    fig.tight_layout()
    return _png(fig, plt)


def _lines(series, shown: list[int], key: str, label: str, log: bool, first: Optional[int], plt) -> str:
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for r in shown:
        x, y = series[r][key]
        ax.plot(x, y, linewidth=0.8, label=f"rank {r}")
    if len(series) > len(shown):
        ax.set_title(f"{len(shown)} of {len(series)} ranks drawn", fontsize=8)
    if first is not None:
        ax.axvline(first, color="black", linestyle="--", linewidth=1, label=f"first divergence (step {first})")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    if len(shown) <= 8 or first is not None:
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    return _png(fig, plt)


def _png(fig, plt) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- the page ------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.verdict { padding: .6em 1em; border-radius: 4px; font-weight: 600; }
.error { background: #fdecea; } .warning { background: #fff4e5; } .pass { background: #edf7ed; }
table { border-collapse: collapse; width: 100%; font-size: .9em; }
td, th { border-bottom: 1px solid #ddd; padding: .35em .5em; text-align: left; vertical-align: top; }
code { background: #f4f4f4; padding: 0 .2em; } img { max-width: 100%; }
.sev-error { color: #c62828; font-weight: 600; } .sev-warning { color: #b26a00; font-weight: 600; }
.sev-info { color: #1565c0; }
"""


def _page(analysis: Analysis, plots: list[tuple[str, str]], first: Optional[int]) -> str:
    run = analysis.run
    e = html.escape
    worst = ("error" if any(f.severity is Severity.ERROR for f in analysis.findings) else
             "warning" if analysis.findings or analysis.errors else "pass")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>distcheck: "
             f"{e(', '.join(run['dirs']))}</title><style>{_STYLE}</style></head><body>",
             f"<h1>distcheck: {e(', '.join(run['dirs']))}</h1>",
             f"<p class='verdict {worst}'>{e(verdict(analysis))}</p>",
             f"<p>{len(run.get('ranks_found', []))} of {run['world_size']} rank(s), parallel mode "
             f"{e(str(run.get('parallel_mode') or 'unknown'))}"
             + ("" if any(r["last_step"] is not None for r in run.get("ranks", {}).values()) or
                run.get("kind") == "diff" else ", no step recorded")
             + (f"; first divergence at step {first}" if first is not None else "") + ".</p>"]
    if analysis.findings:
        parts.append("<h2>Findings</h2><table><tr><th>severity</th><th>finding</th><th>step</th><th>ranks</th>"
                     "<th>parameters</th><th>what and why</th></tr>")
        for f in analysis.findings:
            cause = f"<br><small>caused by {e(f.caused_by)}</small>" if f.caused_by else ""
            parts.append(f"<tr><td class='sev-{f.severity.value}'>{f.severity.value}</td><td><code>{e(f.code)}"
                         f"</code>{cause}</td><td>{'' if f.step is None else f.step}</td>"
                         f"<td>{e(', '.join(map(str, f.ranks)))}</td><td>{e(name_list(f.params, 6))}</td>"
                         f"<td>{e(f.message)}</td></tr>")
        parts.append("</table>")
    if analysis.errors or analysis.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>input error: {e(err.message)}</li>" for err in analysis.errors]
        parts += [f"<li>{e(n.message)}</li>" for n in analysis.notes]
        parts.append("</ul>")
    for title, png in plots:
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Ranks</h2><table><tr><th>rank</th><th>status</th><th>steps</th><th>host</th><th>file</th></tr>")
    for rank, info in run.get("ranks", {}).items():
        span = f"{info['first_step']}..{info['last_step']}" if info["last_step"] is not None else ""
        parts.append(f"<tr><td>{rank}</td><td>{e(info['status'])}</td><td>{span}</td>"
                     f"<td>{e(str(info.get('hostname') or ''))}</td><td><code>{e(info['file'])}</code></td></tr>")
    parts.append("</table><p><small>distcheck explain CODE documents each finding.</small></p></body></html>")
    return "\n".join(parts) + "\n"
