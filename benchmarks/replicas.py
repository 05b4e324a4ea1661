"""Scale-out on one machine: 1 vs 2 vs 3 CPU Triton replicas behind the multi-endpoint client, in ONE run.

    .venv/bin/python benchmarks/replicas.py [--build BUILD] [--configs 1x2,1x1,2x1,3x1] [--repeat 20]
        [--concurrency 16] [--max-new-tokens 32] [--rounds 3] [--out benchmarks/results/replicas.json]

Without `--build`, writes the tiny random checkpoint and its CPU export into `--work` first. A config
"RxT" is R replicas with T ONNX Runtime threads per model (encoder and decoder: the `threads` parameter
of their config.pbtxt, in a copy of the repository; OMP/OpenBLAS threads likewise), so that R x T stays
near the machine's cores. Every server is started once, up front, on loopback with free ports; the
configs share them (R replicas = the first R of the 1-thread servers) and are measured in turn, round
after round, so that a slow spell of the machine hits them all. Each measurement is one pass of
`canary-trt-client bench`'s own `run_benchmark` over every endpoint of the config (LibriVox-5 x
`--repeat`, `--concurrency` requests in flight over all replicas, a warm-up of that many requests first):
RTFx = audio seconds / wall seconds from the first send to the last reply. Reported per config: the
median over rounds, every round, requests per replica, the decoder's mean batch size, the load average
(other users of the machine show there) and the servers' resident memory (tritonserver + python stubs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from load_test import group_rss_bytes  # noqa: E402  (a sibling script)

THREADS = re.compile(r'(key: "threads" value: \{ string_value: )"\d+"')


def tiny_build(work: Path) -> Path:
    from canary_trt.export.build import export
    from canary_trt.random_checkpoint import write_random_checkpoint

    build = work / "build-cpu"
    if not (build / "model_repository").is_dir():
        checkpoint = write_random_checkpoint(work / "checkpoint", "tiny", seed=0)
        export(checkpoint.path, build, target="cpu", log=lambda line: None)
    return build


def repository_with_threads(build: Path, threads: int, work: Path) -> Path:
    """A copy of the build's model repository whose ONNX Runtime models use `threads` threads each."""
    repository = work / f"model_repository-{threads}-threads"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(build / "model_repository", repository)
    for config in repository.glob("*/config.pbtxt"):
        config.write_text(THREADS.sub(rf'\g<1>"{threads}"', config.read_text()))
    return repository


def parse_configs(text: str) -> list[tuple[int, int]]:
    configs = []
    for part in text.split(","):
        replicas, _, threads = part.partition("x")
        configs.append((int(replicas), int(threads)))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, help="a `canary-trt export --target cpu` folder (default: tiny, made)")
    parser.add_argument("--work", type=Path, default=Path("build/replicas"), help="scratch folder")
    parser.add_argument("--configs", type=parse_configs, default=parse_configs("1x2,1x1,2x1,3x1"),
                        help="replicas x threads per model, comma-separated (default 1x2,1x1,2x1,3x1)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=20, help="LibriVox-5 repeated (default 20: 100 clips)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight over all replicas")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results/replicas.json")
    args = parser.parse_args()

    from canary_trt.client.bench import run_benchmark
    from canary_trt.client.machine import describe_machine
    from canary_trt.client.manifest import librivox_utterances
    from canary_trt.server import TritonServer

    args.work.mkdir(parents=True, exist_ok=True)
    build = args.build or tiny_build(args.work)
    utterances = librivox_utterances() * args.repeat
    needed = {}  # threads -> servers needed
    for replicas, threads in args.configs:
        needed[threads] = max(needed.get(threads, 0), replicas)

    servers: dict[int, list[TritonServer]] = {}
    try:
        for threads, count in needed.items():
            repository = repository_with_threads(build, threads, args.work)
            env = {"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
            servers[threads] = []
            for _ in range(count):
                servers[threads].append(TritonServer(repository, env=env).start(timeout=600))
        time.sleep(2.0)  # let the stubs settle after loading
        idle_rss = {s.grpc_url: group_rss_bytes(s.pid)[0] for group in servers.values() for s in group}

        runs: dict[str, list[dict]] = {f"{r}x{t}": [] for r, t in args.configs}
        for round_ in range(1, args.rounds + 1):
            for replicas, threads in args.configs:
                chosen = servers[threads][:replicas]
                load_before = os.getloadavg()[0]
                report = run_benchmark([s.grpc_url for s in chosen], utterances, [args.concurrency],
                                       warmup=args.concurrency, max_new_tokens=args.max_new_tokens)  # fmt: skip
                (result,) = report["passes"]
                decoder = result["triton"].get("decoder", {})
                runs[f"{replicas}x{threads}"].append({
                    "round": round_, "rtfx": result["rtfx"], "wall_seconds": result["wall_seconds"],
                    "done": result["done"], "failed": result["failed"],
                    "latency_p50_seconds": result["latency_seconds"]["p50"],
                    "latency_p90_seconds": result["latency_seconds"]["p90"],
                    "requests_by_replica": list(result["requests_by_endpoint"].values()),
                    "decoder_mean_batch_size": decoder.get("mean_batch_size"),
                    "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                })  # fmt: skip
                print(f"round {round_} {replicas} replica(s) x {threads} thread(s): RTFx {result['rtfx']:.2f}, "
                      f"requests per replica {runs[f'{replicas}x{threads}'][-1]['requests_by_replica']}, "
                      f"load {load_before:.1f}", flush=True)  # fmt: skip
        busy_rss = {s.grpc_url: group_rss_bytes(s.pid)[0] for group in servers.values() for s in group}
    finally:
        for group in servers.values():
            for server in group:
                server.stop()

    mib = 2**20
    configs = []
    for replicas, threads in args.configs:
        rounds = runs[f"{replicas}x{threads}"]
        urls = [s.grpc_url for s in servers[threads][:replicas]]
        configs.append({
            "replicas": replicas, "threads_per_model": threads,
            "rtfx_median": round(statistics.median(r["rtfx"] for r in rounds), 2),
            "rtfx_rounds": [r["rtfx"] for r in rounds],
            "server_rss_mib_idle": round(sum(idle_rss[u] for u in urls) / mib),
            "server_rss_mib_after": round(sum(busy_rss[u] for u in urls) / mib),
            "rounds": rounds,
        })  # fmt: skip
    export = json.loads((build / "export.json").read_text())
    result = {
        "machine": describe_machine(),
        "build": {"path": str(build), "precision": export.get("precision"), "hidden_size": export.get("hidden_size")},
        "workload": {"clips": f"LibriVox-5 (24.73 s) x {args.repeat}", "concurrency": args.concurrency,
                     "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
                     "warmup_requests_per_pass": args.concurrency},
        "configs": configs,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    baseline = configs[0]["rtfx_median"]
    print(f"{'replicas x threads':>18}  {'RTFx (median)':>13}  {'vs first':>8}  {'RSS MiB':>7}  rounds")
    for c in configs:
        print(f"{c['replicas']:>9} x {c['threads_per_model']:<6}  {c['rtfx_median']:>13.2f}  "
              f"{c['rtfx_median'] / baseline:>7.2f}x  {c['server_rss_mib_after']:>7}  {c['rtfx_rounds']}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
