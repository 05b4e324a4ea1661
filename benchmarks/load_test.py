"""Bounded load test of the served CPU pipeline: does an overload lose anything, and what does it cost in memory?

    .venv/bin/python benchmarks/load_test.py [--build build/demo/build-cpu] [--requests 256] [--concurrency 64]
        [--max-new-tokens 32] [--attempts 1] [--deadline 300]

Starts tritonserver (loopback only, free ports) on the build's model repository, reads the resident memory
of its whole process tree (tritonserver and the python backend stubs: RSS read with psutil, summed over the
server's process group) once idle, then fires `--requests` requests (the 5 LibriVox clips, cycled) with
`--concurrency` in flight through the async gRPC client, sampling the memory every 0.2 s, and reads it
again once all are answered. Each request ends as completed, rejected (Triton's overload answer: queue
full or queue timeout) or failed (anything else, with its reason). By default a request is tried once
(`--attempts 1`): a rejection is counted, not hidden by the client's retries. The run stops by itself:
every request is answered, or the `--deadline` passes (then the unanswered ones count as failed).
Prints a table; writes benchmarks/results/load_test.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from memory import MemorySampler, group_rss_bytes  # benchmarks/memory.py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


async def fire(url: str, clips: list, requests: int, concurrency: int, max_new_tokens: int, attempts: int,
               deadline: float) -> list[dict]:  # fmt: skip
    from canary_trt.client.api import AsyncTranscriptionClient
    from canary_trt.client.retry import OVERLOADED, Failure, RetryPolicy

    outcomes: list[dict | None] = [None] * requests
    async with AsyncTranscriptionClient(url, concurrency=concurrency,
                                        retry=RetryPolicy(attempts=attempts)) as client:  # fmt: skip

        async def one(i: int):
            start = time.perf_counter()
            try:
                clip = clips[i % len(clips)]
                result = await client.transcribe(clip, sample_rate=16000, max_new_tokens=max_new_tokens)
                outcomes[i] = {"status": "completed", "latency_seconds": result.latency_seconds}
            except Exception as e:
                failure = Failure.of(e)
                outcomes[i] = {"status": "rejected" if failure.kind == OVERLOADED else "failed",
                               "seconds": time.perf_counter() - start, "error": failure.text}  # fmt: skip

        try:
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(requests))), deadline)
        except asyncio.TimeoutError:
            pass
    return [o or {"status": "failed", "error": f"no answer within the {deadline:g} s deadline"} for o in outcomes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=ROOT / "build/demo/build-cpu",
                        help="a `canary-trt export` output folder (default build/demo/build-cpu)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--attempts", type=int, default=1, help="tries per request (default 1: no retries)")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole burst (default 300)")
    parser.add_argument("--out", type=Path, default=HERE / "results/load_test.json")
    args = parser.parse_args()

    from canary_trt.audio import load_audio
    from canary_trt.client.machine import describe_machine
    from canary_trt.contract import LIBRIVOX_DIR
    from canary_trt.client.metrics import percentiles
    from canary_trt.server import TritonServer

    repository = args.build / "model_repository"
    if not repository.is_dir():
        raise SystemExit(f"{repository} not found: run ./build.sh --demo, or canary-trt export --out {args.build}")
    clips = [load_audio(p) for p in sorted(LIBRIVOX_DIR.glob("*.wav"))]
    if not clips:
        raise SystemExit(f"no LibriVox clips in {LIBRIVOX_DIR}: install Debian's pocketsphinx-testdata")

    with TritonServer(repository, host="127.0.0.1") as server:
        time.sleep(1.0)  # let the stubs settle after loading
        before, processes = group_rss_bytes(server.pid)
        sampler = MemorySampler(lambda: group_rss_bytes(server.pid)[0])
        sampler.start()
        start = time.perf_counter()
        outcomes = asyncio.run(fire(server.grpc_url, clips, args.requests, args.concurrency, args.max_new_tokens,
                                    args.attempts, args.deadline))  # fmt: skip
        wall = time.perf_counter() - start
        peak = sampler.stop()
        time.sleep(1.0)
        after, processes_after = group_rss_bytes(server.pid)
        alive = server.alive

    counts = {k: sum(o["status"] == k for o in outcomes) for k in ("completed", "rejected", "failed")}
    latencies = [o["latency_seconds"] for o in outcomes if o["status"] == "completed"]
    pct = percentiles(latencies)
    reasons: dict[str, int] = {}
    for o in outcomes:
        if o["status"] != "completed":
            reasons[o["error"][:200]] = reasons.get(o["error"][:200], 0) + 1
    mib = 2**20
    result = {
        "machine": describe_machine(),
        "build": str(args.build),
        "workload": {"requests": args.requests, "concurrency": args.concurrency, "max_new_tokens": args.max_new_tokens,
                     "attempts": args.attempts, "clips": "LibriVox-5 (24.73 s), cycled",
                     "deadline_seconds": args.deadline},
        **counts,
        "accounted": sum(counts.values()) == args.requests,
        "wall_seconds": round(wall, 3),
        "latency_seconds": {"p50": _r(pct["p50"]), "p99": _r(pct["p99"]), "max": _r(max(latencies, default=None))},
        "memory_mib": {"before": round(before / mib, 1), "peak": round(peak / mib, 1), "after": round(after / mib, 1),
                       "processes_before": processes, "processes_after": processes_after},
        "server_alive_after": alive,
        "not_completed_reasons": reasons,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("requests / concurrency", f"{args.requests} / {args.concurrency}"),
        ("completed / rejected / failed", f"{counts['completed']} / {counts['rejected']} / {counts['failed']}"),
        ("wall s", f"{wall:.2f}"),
        ("latency p50 / p99 ms", " / ".join("-" if v is None else f"{v * 1000:.0f}" for v in (pct["p50"], pct["p99"]))),
        ("RSS before / peak / after MiB", f"{before / mib:.0f} / {peak / mib:.0f} / {after / mib:.0f}"),
        ("server alive after", str(alive)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    for reason, n in reasons.items():
        print(f"  {n} x {reason}")
    print(f"wrote {args.out}")


def _r(value):
    return None if value is None else round(value, 4)


if __name__ == "__main__":
    main()
