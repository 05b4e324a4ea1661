"""Full-size random checkpoint -> CPU ONNX build on this machine: wall time, file sizes and peak memory.

    .venv/bin/python benchmarks/export_full.py [--work build/bench-full] [--precision int8]

Each stage runs as its own `canary-trt` process, so its peak resident memory is its own (os.wait4).
Writes benchmarks/results/export_full.json and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "canary_trt.cli"]


def run(command: list[str]) -> dict:
    """Run a command, echo its output, return wall seconds, peak RSS (GiB) and its output lines."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in child.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip())
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{command} failed with exit code {child.returncode}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "log": [l for l in lines if l.lstrip().startswith(("[", "done in"))]}  # fmt: skip


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())  # fmt: skip
    mem = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/bench-full"))
    parser.add_argument("--precision", choices=("fp32", "int8", "int4"), default="int8")
    args = parser.parse_args()
    checkpoint, build = args.work / "checkpoint", args.work / "build-cpu"
    results = {"machine": machine()}
    if not (checkpoint / "model.safetensors").is_file():
        results["make_checkpoint"] = run([*CLI, "make-checkpoint", "--size", "full", "--out", str(checkpoint)])
    results["export"] = run([*CLI, "export", "--checkpoint", str(checkpoint), "--out", str(build), "--precision", args.precision])
    results["files_gb"] = {str(p.relative_to(build)): round(p.stat().st_size / 1e9, 3)
                           for p in sorted(build.rglob("*")) if p.is_file() and p.stat().st_size > 1e6}  # fmt: skip
    out = HERE / "results" / "export_full.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| stage | wall s | peak RSS GiB |\n|---|---|---|")
    for stage in ("make_checkpoint", "export"):
        if stage in results:
            print(f"| {stage} | {results[stage]['seconds']} | {results[stage]['peak_rss_gib']} |")
    print("\n| file | GB |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in results["files_gb"].items()))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
