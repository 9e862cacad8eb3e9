#!/usr/bin/env python3
"""The device path's replica comparison against the host path, on real msrun ranks.

Runs ``scripts/equality_job.py --time`` under msrun (2 ranks by default): about 10.5M
float32 parameters compared by ``ReplicaEquality`` (a broadcast from the leader, an
element-wise compare, an all-gather of flags) and by the host path (xxh3 digests of
every tensor and an all-gather of them). Prints the medians and writes JSON.

    python scripts/bench/equality.py [--ranks 2] [--json FILE]
"""
import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(os.path.dirname(HERE), "equality_job.py")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--json", default="bench-equality.json")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="distcheck-bench-") as out:
        msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
        env = {**os.environ, "GLOG_v": "3",
               "PATH": os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))}
        subprocess.run([msrun, f"--worker_num={args.ranks}", f"--local_worker_num={args.ranks}",
                        f"--master_port={port}", f"--log_dir={os.path.join(out, 'logs')}", "--join=True",
                        JOB, out, "--time"], check=True, capture_output=True, env=env)
        timings = [json.load(open(os.path.join(out, f"timings_{r}.json"))) for r in range(args.ranks)]
    worst = {k: max(t[k] for t in timings) for k in ("device_path_s", "host_path_s")}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)", "ranks": args.ranks,
              "bytes": timings[0]["bytes"], **worst}
    print(f"{result['machine']}; {args.ranks} msrun ranks; {result['bytes'] / 1e6:.0f} MB of float32 parameters")
    print(f"  device path (broadcast, compare, all-gather of flags): {worst['device_path_s'] * 1e3:8.1f} ms")
    print(f"  host path (xxh3 of every tensor, all-gather):          {worst['host_path_s'] * 1e3:8.1f} ms")
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
