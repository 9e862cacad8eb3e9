"""The ``distcheck`` command: ``launch``, ``analyze``, ``watch``, ``rules``, ``explain``.

Exit codes are :class:`distcheck.exits.ExitCode` (also in the README).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from distcheck import __version__
from distcheck.exits import ExitCode, UsageError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return ExitCode.INPUT
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"distcheck: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    except KeyboardInterrupt:
        print("distcheck: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # the reader went away (`distcheck rules | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distcheck",
        description="Find where data-parallel replicas of a MindSpore job part ways, and why.",
        epilog="Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage or input error, "
               "3 the launched job failed or stalled, 130/143 launch stopped by SIGINT/SIGTERM.")
    parser.add_argument("--version", action="version", version=f"distcheck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("analyze", help="analyse the dumps of a finished (or crashed) run",
                       description="Analyse the per-rank dumps in RUN_DIR (several directories, one per "
                                   "node, are merged into one run).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--workers", type=int, default=1, metavar="K",
                   help="spread the analysis over K local processes (under mpirun: over its processes)")
    add_report_options(p)
    p.set_defaults(handler=cmd_analyze)

    p = sub.add_parser("launch", help="run a training job with probes attached, then analyse it",
                       description="Launch CMD on N ranks with distcheck attached to every Model.train "
                                   "call (no change to the script), then print the analysis.")
    p.add_argument("-n", "--nproc", type=int, required=True, metavar="N", help="total number of ranks")
    p.add_argument("--launcher", choices=("auto", "msrun", "mpirun", "none"), default="auto",
                   help="auto: none for -n 1, else msrun if installed, else mpirun")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<timestamp>); one that already "
                                                "holds a run is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="remove an earlier run's files (rank dumps, job.json, ready/, ends/, logs/, progress "
                        "files) from --out before starting; nothing else in it is touched")
    p.add_argument("--every", type=int, default=1, metavar="K", help="record every K-th step (default 1)")
    p.add_argument("--full-steps", default="", metavar="S,S,...",
                   help="steps at which whole tensors are kept too, to measure divergences")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop the job when the online check finds replicas that differ")
    p.add_argument("--online-every", type=int, default=0, metavar="K",
                   help="also run the online cross-rank check every K recorded steps (default: step 0 only)")
    p.add_argument("--flush-seconds", type=float, default=2.0, metavar="S",
                   help="write buffered rows to disk at least this often (default 2; 0: every step)")
    p.add_argument("--stall-timeout", type=float, metavar="S",
                   help="stop the job when no rank has completed a step for S seconds (counted from the "
                        "first rank's start of training, so allow for the first step's compilation); "
                        "every rank's stack is kept, and launch exits 3")
    p.add_argument("--grad-copy-limit", default="1G", metavar="SIZE",
                   help="most device memory Model.train's copy of the gradients may take, e.g. 512M or 4G "
                        "(default 1G); above it gradients are not recorded; 0: never")
    p.add_argument("--update-norm-every", type=int, default=4, metavar="N",
                   help="measure the update norm of each parameter of 1 MiB or more at every N-th recorded "
                        "step, in turn, keeping a copy of about 1/N of them (default 4; 1: every parameter "
                        "at every recorded step)")
    p.add_argument("--strict", action="store_true",
                   help="a probe error stops the job instead of switching the probe off (for CI)")
    p.add_argument("--activations", action="store_true",
                   help="tap activation cells (ReLU, Sigmoid, Tanh, ...) for saturation and dead-unit "
                        "statistics (also: DISTCHECK_ACTIVATIONS=1)")
    p.add_argument("--perturb", action="store_true",
                   help="move every trainable weight by one ulp before step 0: a noise run, for "
                        "'distcheck diff --noise' (also: DISTCHECK_PERTURB=1)")
    p.add_argument("--no-analyze", action="store_true", help="do not analyse after the job")
    p.add_argument("--local-n", type=int, metavar="M", help="msrun: ranks on this node (default: N)")
    p.add_argument("--master-addr", metavar="HOST", help="msrun: scheduler host for multi-node jobs")
    p.add_argument("--master-port", type=int, metavar="PORT", help="scheduler port (default: a free one)")
    p.add_argument("--node-rank", type=int, metavar="I", help="msrun: this node's rank")
    p.add_argument("--launcher-arg", action="append", default=[], metavar="ARG",
                   help="pass ARG to msrun or mpirun as it is (repeatable)")
    add_report_options(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    p.set_defaults(handler=cmd_launch)

    p = sub.add_parser("watch", help="show live per-rank progress of a running (or finished) job",
                       description="Show each rank's status, step, steps per second, phase and last sign "
                                   "of life in RUN_DIR, and flag straggling, stalled or silent ranks. "
                                   "Refreshes until no rank is running any more (or Ctrl-C); prints one "
                                   "table with --once or when stdout is not a terminal.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="print one table and exit (exit 2 if there are no rank files)")
    p.add_argument("--stall-seconds", type=float, default=30.0, metavar="S",
                   help="flag a running rank as stalled when no step has completed for S seconds (default 30)")
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser("diff", help="compare a run with a reference run, step by step",
                       description="Compare RUN with the REFERENCE run (the same model on one device, or in "
                                   "another layout) at the steps both recorded: whether they are comparable, "
                                   "whether they saw the same global batches, gradients that differ by one factor, "
                                   "BatchNorm over local batches, and the first step where the loss, gradients "
                                   "or parameters part beyond the envelope of rounding noise.")
    p.add_argument("run_a", metavar="REFERENCE")
    p.add_argument("run_b", metavar="RUN")
    p.add_argument("--noise", metavar="NOISE_RUN",
                   help="a noise run of the reference (distcheck launch --perturb): its drift from REFERENCE "
                        "measures the envelope (default: a per-dtype default that grows with the step)")
    p.add_argument("--rtol", type=float, default=None, help="a fixed relative tolerance instead of the envelope")
    p.add_argument("--atol", type=float, default=None, help="a fixed absolute tolerance instead of the envelope")
    p.add_argument("--rank-a", type=int, default=None, metavar="R",
                   help="the reference's rank to compare (default: its lowest)")
    p.add_argument("--rank-b", type=int, default=None, metavar="R", help="RUN's rank to compare (default: its lowest)")
    p.add_argument("--map", metavar="FILE",
                   help="YAML mapping of parameter names, REFERENCE name: RUN name, for runs that name them differently")
    add_report_options(p, config=False)
    p.set_defaults(handler=cmd_diff)

    p = sub.add_parser("show", help="list what a run holds, or export one series as CSV",
                       description="List the ranks (how each ended, the steps recorded), training calls, "
                                   "parameters with their replica groups, and recorded kinds; with --series, "
                                   "write one series of every rank as CSV (one row per step, one column per rank).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--series", metavar="NAME", help="loss, grad_norm, param:NAME or grad:NAME")
    p.add_argument("--stat", default="l2", help="with param:/grad:, the statistic: min, max, mean, l2, nan, inf, "
                                                "delta_l2 (default l2)")
    p.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("rules", help="list every finding code with its severity and one line")
    p.set_defaults(handler=cmd_rules)
    p = sub.add_parser("explain", help="print the documentation of a finding code")
    p.add_argument("code")
    p.set_defaults(handler=cmd_explain)
    return parser


def add_report_options(p: argparse.ArgumentParser, config: bool = True) -> None:
    p.add_argument("--format", choices=("text", "json", "junit", "markdown", "html"), default="text",
                   help="text (a terminal), json (docs/report.schema.json), junit (CI test reports), "
                        "markdown (a CI step summary), html (one self-contained page with plots)")
    p.add_argument("--output", metavar="FILE", help="write the report here instead of stdout")
    p.add_argument("--fail-on", choices=("error", "warning", "never"), default="error",
                   help="lowest severity that makes the exit code 1 (default: error)")
    if config:
        p.add_argument("--config", metavar="FILE", help="YAML settings overriding configs/default.yaml")


def cmd_analyze(args: argparse.Namespace) -> int:
    from distcheck.report import write_report

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    config = _config(args.config)
    return write_report(args.run_dirs, config, args.format, args.output, args.fail_on, workers=args.workers)


def cmd_launch(args: argparse.Namespace) -> int:
    from distcheck.launch import launch

    config = _config(args.config)
    return launch(args, config)


def cmd_diff(args: argparse.Namespace) -> int:
    from distcheck.diff import diff
    from distcheck.report import finish_report

    if (args.rtol is not None and args.rtol < 0) or (args.atol is not None and args.atol < 0):
        raise UsageError("--rtol and --atol must not be negative")
    if args.noise is not None and (args.rtol is not None or args.atol is not None):
        raise UsageError("--noise measures the tolerance; give it or --rtol/--atol, not both")
    rename = _name_map(args.map) if args.map else None
    analysis = diff(args.run_a, args.run_b, args.rtol, args.atol, noise=args.noise, rank_a=args.rank_a,
                    rank_b=args.rank_b, rename=rename)
    return finish_report(analysis, args.format, args.output, args.fail_on)


def _name_map(path: str) -> dict[str, str]:
    """``--map FILE``: a YAML mapping of REFERENCE parameter names to RUN's."""
    import yaml

    try:
        with open(path) as f:
            value = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--map {path}: cannot read it: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UsageError(f"--map {path}: expected a mapping of parameter names (reference name: run name)")
    return value


def cmd_show(args: argparse.Namespace) -> int:
    from distcheck.show import show

    return show(args.run_dirs, args.series, args.stat, args.output)


def cmd_watch(args: argparse.Namespace) -> int:
    from distcheck.watch import watch

    if not args.interval > 0 or not args.stall_seconds > 0:
        raise UsageError("--interval and --stall-seconds must be positive numbers of seconds")
    return watch(args.run_dir, interval=args.interval, once=args.once, stall_seconds=args.stall_seconds)


def cmd_rules(args: argparse.Namespace) -> int:
    from distcheck.rules import RULES

    width = max(len(code) for code in RULES)
    order = {"cross-rank": 0, "per rank": 1, "two runs": 2}
    for code, r in sorted(RULES.items(), key=lambda kv: (order[kv[1].scope], kv[0])):
        print(f"{code:<{width}}  {r.severity.value:<7}  {r.scope:<10}  {r.summary}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from distcheck.rules import RULES

    r = RULES.get(args.code)
    if r is None:
        raise UsageError(f"unknown code '{args.code}'; 'distcheck rules' lists them all")
    print(f"{r.code} ({r.severity.value}, {r.scope}): {r.summary}\n")
    print(r.doc)
    return 0


def _config(path: Optional[str]) -> dict:
    from distcheck.config import ConfigError, load_config
    from distcheck.rules import RULES

    try:
        config = load_config(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    unknown = [c for c in config["rules"]["disable"] or () if c not in RULES]
    if unknown:
        raise UsageError(f"{path}: rules.disable names unknown code(s) {', '.join(map(str, unknown))}; "
                         "'distcheck rules' lists them")
    return config


if __name__ == "__main__":
    sys.exit(main())
