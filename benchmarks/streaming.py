"""Live transcription latency: concurrent streams to canary_qwen_stream, paced like microphones.

    .venv/bin/python benchmarks/streaming.py --url HOST:PORT --streams 1,4,16 --out benchmarks/results/streaming.json
    .venv/bin/python benchmarks/streaming.py --build build/bench-full/build-cpu --streams 1,4,16

`--url`: a running server; `--build`: one tritonserver (loopback, free ports) started on that build's model
repository, warmed with one short stream. At each level of `--streams`, that many streams run at once through
one AsyncTranscriptionClient, each sending its own `--seconds` recording (long_form.py's: Debian's
pocketsphinx-testdata speech with seeded pauses over faint noise, a different seed per stream) in
`--chunk-ms` chunks, paced at 1x (`--realtime`, the default: a chunk is sent once its last sample would have
been recorded), asking for interims every `--interim-ms`.

Per final segment (an utterance), measured on the client's clock from when its audio was sent: the delay
from the utterance's end (its end_s after the stream's start) to its final segment, and from its start to
its first interim (an interim starts where its utterance's final will). p50, p90 and max per level, with
the counts of finals, interims and failed streams. Without --realtime the recordings are sent as fast as the
server takes them: the delays then mean nothing, the wall time and RTFx do. Writes --out (default
benchmarks/results/streaming.json) with the machine and the model's parameters, and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class StreamRun:
    """One stream's segments with their arrival times (seconds after its first chunk was due), or its failure."""

    audio_seconds: float
    finals: list = field(default_factory=list)  # (StreamSegment, arrival)
    interims: list = field(default_factory=list)  # (StreamSegment, arrival)
    error: str | None = None
    wall_seconds: float = 0.0

    def final_delays(self) -> list[float]:
        """Utterance end -> its final segment."""
        return [arrival - segment.end_s for segment, arrival in self.finals]

    def first_interim_delays(self) -> list[float]:
        """Utterance start -> its first interim (an interim starts where the final of its utterance will)."""
        firsts: dict[float, float] = {}
        for segment, arrival in self.interims:
            firsts.setdefault(segment.start_s, arrival)
        return [firsts[s.start_s] - s.start_s for s, _ in self.finals if s.start_s in firsts]


async def one_stream(client, samples: np.ndarray, chunk_ms: int, interim_ms: int | None, realtime: bool) -> StreamRun:
    from canary_trt.client.streaming import chunked, paced_async
    from canary_trt.client.retry import Failure
    from canary_trt.contract import SAMPLE_RATE

    run = StreamRun(samples.size / SAMPLE_RATE)
    chunks = chunked(samples, chunk_ms)
    start = time.monotonic()
    try:
        async for segment in client.stream(paced_async(chunks) if realtime else chunks, interim_ms):
            arrival = time.monotonic() - start
            if segment.is_final:
                run.finals.append((segment, arrival))
            else:
                run.interims.append((segment, arrival))
    except Exception as e:
        run.error = Failure.of(e).text
    run.wall_seconds = time.monotonic() - start
    return run


async def run_level(url: str, recordings: list[np.ndarray], chunk_ms: int, interim_ms: int | None, realtime: bool,
                    timeout: float | None) -> dict:  # fmt: skip
    """`len(recordings)` streams at once; the level's numbers (module doc)."""
    from canary_trt.client import AsyncTranscriptionClient

    start = time.perf_counter()
    async with AsyncTranscriptionClient(url, concurrency=len(recordings), timeout=timeout) as client:
        runs = await asyncio.gather(*(one_stream(client, r, chunk_ms, interim_ms, realtime) for r in recordings))
    return summarize(runs, time.perf_counter() - start, realtime)


def summarize(runs: list[StreamRun], wall: float, realtime: bool) -> dict:
    from canary_trt.client.metrics import percentiles

    def stats(values: list[float]) -> dict:
        pct = percentiles(values, (50, 90))
        return {**{k: _round(v) for k, v in pct.items()}, "max": _round(max(values, default=None)), "n": len(values)}

    done = [r for r in runs if r.error is None]
    audio = sum(r.audio_seconds for r in runs)
    return {
        "streams": len(runs), "failed_streams": len(runs) - len(done), "errors": [r.error for r in runs if r.error],
        "finals": sum(len(r.finals) for r in done), "interims": sum(len(r.interims) for r in done),
        "audio_seconds": round(audio, 3), "wall_seconds": round(wall, 3), "rtfx": round(audio / wall, 3),
        "final_delay_seconds": stats([d for r in done for d in r.final_delays()]) if realtime else None,
        "first_interim_delay_seconds": stats([d for r in done for d in r.first_interim_delays()]) if realtime else None,
    }  # fmt: skip


def recordings(streams: int, seconds: float) -> list[np.ndarray]:
    from long_form import speech_recording  # benchmarks/long_form.py

    return [speech_recording(seconds / 60, seed=7 + i) for i in range(streams)]


def stream_parameters(url: str) -> dict[str, str]:
    import tritonclient.grpc as grpcclient

    from canary_trt.contract import STREAM_MODEL

    with grpcclient.InferenceServerClient(url) as triton:
        config = triton.get_model_config(STREAM_MODEL, as_json=True)["config"]
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def measure(url: str, levels: list[int], seconds: float, chunk_ms: int, interim_ms: int | None, realtime: bool,
            timeout: float | None, log=print) -> dict:  # fmt: skip
    """Every level against the server at `url`: the report (module doc), without the machine."""
    passes = []
    for level in levels:
        result = asyncio.run(run_level(url, recordings(level, seconds), chunk_ms, interim_ms, realtime, timeout))
        log(f"{level} stream(s): {json.dumps({k: v for k, v in result.items() if k != 'errors'})}")
        passes.append(result)
    return {"url": url, "recording_seconds": seconds, "chunk_ms": chunk_ms, "interim_ms": interim_ms,
            "realtime": realtime, "model_parameters": stream_parameters(url), "levels": passes}  # fmt: skip


def warm_up(url: str) -> None:
    """One short unpaced stream, so that the first level does not pay for the first run."""
    run = asyncio.run(run_level(url, recordings(1, 5.0), 500, None, False, None))
    if run["failed_streams"]:
        raise SystemExit(f"warm-up stream failed: {run['errors'][0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server's gRPC endpoint, host:port")
    where.add_argument("--build", type=Path, help="a `canary-trt export` output folder: serve it here")
    parser.add_argument("--streams", default="1,4,16", help="levels of concurrent streams (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=60.0, help="each stream's recording (default 60)")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per request (default 100)")
    parser.add_argument("--interim-ms", type=int, default=1000, help="interim interval, 0 for none (default 1000)")
    parser.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                        help="pace each stream at 1x (default); --no-realtime sends as fast as taken")  # fmt: skip
    parser.add_argument("--timeout", type=float, help="seconds per stream (default: none)")
    parser.add_argument("--out", type=Path, default=HERE / "results/streaming.json")
    args = parser.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    if min(levels) < 1 or args.seconds <= 0 or args.chunk_ms < 1:
        raise SystemExit("--streams must be positive integers, --seconds and --chunk-ms positive")

    from canary_trt.client.machine import describe_machine

    def run(url: str) -> dict:
        return measure(url, levels, args.seconds, args.chunk_ms, args.interim_ms or None, args.realtime, args.timeout)

    if args.url:
        report = run(args.url)
    else:
        from canary_trt.server import TritonServer

        if not (args.build / "model_repository").is_dir():
            raise SystemExit(f"{args.build}/model_repository not found: run benchmarks/export_full.py or "
                             "canary-trt export")
        with TritonServer(args.build / "model_repository", host="127.0.0.1") as server:
            warm_up(server.grpc_url)
            report = {"build": str(args.build), **run(server.grpc_url)}
    report = {"machine": describe_machine(), **report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")


def print_table(report: dict) -> None:
    rows = [("streams", "finals", "interims", "failed", "final p50/p90 s", "first interim p50/p90 s", "RTFx")]
    for level in report["levels"]:
        delays = [level["final_delay_seconds"], level["first_interim_delay_seconds"]]
        rows.append((str(level["streams"]), str(level["finals"]), str(level["interims"]), str(level["failed_streams"]),
                     *("-" if d is None else f"{_cell(d['p50'])} / {_cell(d['p90'])}" for d in delays),
                     f"{level['rtfx']:.2f}"))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


if __name__ == "__main__":
    main()
