"""Long recordings, served: canary_qwen_long against fixed 40-s windows, and peak memory on an hour-long file.

    .venv/bin/python benchmarks/long_form.py rtfx [--build build/bench-full/build-cpu] [--minutes 5.5]
    .venv/bin/python benchmarks/long_form.py memory [--build build/demo/build-cpu] [--minutes 60]

The recording: Debian's pocketsphinx-testdata speech (the 5 LibriVox clips, the 5 `cards` recordings and the
4 raw 16-kHz ones), cycled in a seeded shuffle, each after a seeded 0.3-1.5 s pause, over -60 dBFS noise,
until `--minutes` are filled.

`rtfx`: one tritonserver (loopback, free ports) on the build, warmed with one short request; then the
recording through `canary_qwen_long` (the client's long-form path: VAD segments, each budgeted by its
length), then the same audio cut into fixed 40-s windows (as NeMo's chunked script cuts it) sent to
`canary_qwen` with as many in flight as the long model keeps (its max_chunks_in_flight), each with the
build's default budget. Per path: wall seconds, RTFx, pieces, tokens, pieces that used their whole
budget, and the server's peak resident memory (process group). Random weights never emit the end token:
every piece runs to its budget, so the token counts here are what the budgets allow, an upper bound on
the work real speech costs.

`memory`: the recording written as 16-bit FLAC; tritonserver and the OpenAI front (`canary-trt api`,
upload limit raised to fit) started; their resident memory read idle, sampled every 0.2 s while the file is
posted to /v1/audio/transcriptions (verbose_json), and read again after. Writes
benchmarks/results/long_form_{rtfx,memory}.json and prints the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from memory import MemorySampler, group_rss_bytes, process_rss_bytes  # benchmarks/memory.py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WINDOW_SECONDS = 40.0  # NeMo's chunked inference for Canary cuts fixed windows of the model's 40-s limit
MiB = 2**20


def speech_recording(minutes: float, seed: int = 7) -> np.ndarray:
    """`minutes` of pocketsphinx-testdata speech with pauses over a faint noise floor (module doc), 16 kHz."""
    from canary_trt.audio import load_audio
    from canary_trt.contract import LIBRIVOX_DIR, SAMPLE_RATE

    data = LIBRIVOX_DIR.parent
    wavs = sorted(LIBRIVOX_DIR.glob("*.wav")) + sorted((data / "cards").glob("*.wav"))
    raws = [data / name for name in ("goforward.raw", "numbers.raw", "something.raw", "tidigits/dhd.2934z.raw")]
    if len(wavs) < 10 or not all(p.is_file() for p in raws):
        raise SystemExit(f"pocketsphinx-testdata recordings missing under {data}: install the Debian package")
    clips = [load_audio(p) for p in wavs] + [np.fromfile(p, dtype="<i2").astype(np.float32) / 32768 for p in raws]
    rng = np.random.default_rng(seed)
    parts, filled, wanted = [], 0, int(minutes * 60 * SAMPLE_RATE)
    while filled < wanted:
        for i in rng.permutation(len(clips)):
            pause = np.zeros(int(rng.uniform(0.3, 1.5) * 1000) * 16, np.float32)  # whole ms
            parts += [pause, clips[i]]
            filled += pause.size + clips[i].size
    audio = np.concatenate(parts)[:wanted]
    return audio + rng.standard_normal(audio.size).astype(np.float32) * np.float32(1e-3)


def machine() -> dict:
    from canary_trt.client.machine import describe_machine

    return describe_machine()


def build_facts(build: Path) -> dict:
    from canary_trt.contract import Budgets
    from canary_trt.export_info import read_export_info

    info = read_export_info(build)
    return {"build": str(build), "precision": info.get("precision"), "checkpoint": info.get("checkpoint"),
            "max_new_tokens": Budgets.from_manifest(info).max_new_tokens}  # fmt: skip


def long_model_parameters(triton) -> dict[str, str]:
    from canary_trt.contract import LONG_FORM_MODEL

    config = triton.get_model_config(LONG_FORM_MODEL, as_json=True)["config"]
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def pieces_summary(wall: float, audio_seconds: float, token_counts: list[int], budgets: list[int], peak: int,
                   idle: int) -> dict:  # fmt: skip
    return {
        "wall_seconds": round(wall, 2), "rtfx": round(audio_seconds / wall, 3), "pieces": len(token_counts),
        "tokens": sum(token_counts), "pieces_at_budget": sum(n >= b for n, b in zip(token_counts, budgets)),
        "tokens_per_second": round(sum(token_counts) / wall, 2),
        "server_peak_rss_mib": round(peak / MiB), "server_peak_over_idle_mib": round((peak - idle) / MiB),
    }  # fmt: skip


def run_rtfx(args) -> dict:
    import tritonclient.grpc as grpcclient

    from canary_trt.client import AsyncTranscriptionClient, TranscriptionClient
    from canary_trt.contract import SAMPLE_RATE
    from canary_trt.longform.served_options import from_parameters
    from canary_trt.server import TritonServer

    facts = build_facts(args.build)
    audio = speech_recording(args.minutes)
    seconds = audio.size / SAMPLE_RATE
    window = int(WINDOW_SECONDS * SAMPLE_RATE)
    windows = [audio[i : i + window] for i in range(0, audio.size, window)]
    windows = [w for w in windows if w.size >= SAMPLE_RATE]  # a tail under 1 s is dropped, as a user would
    print(f"recording: {seconds:.1f} s; build: {facts}", flush=True)
    with TritonServer(args.build / "model_repository") as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as triton:
            parameters = long_model_parameters(triton)
        in_flight = int(parameters["max_chunks_in_flight"])
        with TranscriptionClient(server.grpc_url) as client:
            client.transcribe(windows[0][: 5 * SAMPLE_RATE], sample_rate=SAMPLE_RATE, max_new_tokens=4)  # warm-up
        time.sleep(1.0)
        idle, _ = group_rss_bytes(server.pid)

        sampler = MemorySampler(lambda: group_rss_bytes(server.pid)[0])
        sampler.start()
        with TranscriptionClient(server.grpc_url, timeout=args.timeout) as client:
            start = time.perf_counter()
            long = client.transcribe(audio, sample_rate=SAMPLE_RATE)
            long_wall = time.perf_counter() - start
        long_peak = sampler.stop()
        counts = [len(s.token_ids) for s in long.segments]
        options = from_parameters(parameters)
        budgets = [options.token_budget(round((s.end_s - s.start_s) * 1000)) for s in long.segments]
        long_form = pieces_summary(long_wall, seconds, counts, budgets, long_peak, idle)
        long_form["segments_flagged_truncated"] = sum(bool(s.truncated) for s in long.segments)
        long_form["segment_seconds"] = [round(s.end_s - s.start_s, 3) for s in long.segments]
        print(f"canary_qwen_long: {long_form}", flush=True)

        sampler = MemorySampler(lambda: group_rss_bytes(server.pid)[0])
        sampler.start()

        async def fixed_windows():
            async with AsyncTranscriptionClient(server.grpc_url, concurrency=in_flight, timeout=args.timeout) as client:
                return await client.transcribe_many(windows, sample_rate=SAMPLE_RATE)

        start = time.perf_counter()
        results = asyncio.run(fixed_windows())
        windows_wall = time.perf_counter() - start
        windows_peak = sampler.stop()
        fixed = pieces_summary(windows_wall, sum(w.size for w in windows) / SAMPLE_RATE,
                               [len(r.token_ids) for r in results], [facts["max_new_tokens"]] * len(results),
                               windows_peak, idle)  # fmt: skip
        print(f"fixed {WINDOW_SECONDS:g}-s windows: {fixed}", flush=True)
    return {
        "machine": machine(), **facts, "recording_seconds": round(seconds, 3), "server_idle_rss_mib": round(idle / MiB),
        "long_model_parameters": parameters, "windows_in_flight": in_flight,
        "canary_qwen_long": long_form, f"fixed_{WINDOW_SECONDS:g}s_windows": fixed,
        "rtfx_ratio_long_over_windows": round(long_form["rtfx"] / fixed["rtfx"], 3),
    }  # fmt: skip


def run_memory(args) -> dict:
    import httpx
    import soundfile as sf

    from canary_trt.contract import SAMPLE_RATE
    from canary_trt.openai_api.process import ApiProcess
    from canary_trt.server import TritonServer

    facts = build_facts(args.build)
    audio = speech_recording(args.minutes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recording.flac"
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        file_mib = path.stat().st_size / MiB
        del audio  # the client holds only the file, as a user's would
        print(f"recording: {args.minutes:g} min, FLAC {file_mib:.1f} MiB; build: {facts}", flush=True)
        with TritonServer(args.build / "model_repository") as server, \
                ApiProcess(server.grpc_url, "--max-file-mb", str(int(file_mib) + 8),
                           "--timeout", str(args.timeout)) as api:  # fmt: skip
            time.sleep(1.0)
            server_idle, front_idle = group_rss_bytes(server.pid)[0], process_rss_bytes(api.process.pid)
            samplers = [MemorySampler(lambda: group_rss_bytes(server.pid)[0]),
                        MemorySampler(lambda: process_rss_bytes(api.process.pid))]  # fmt: skip
            for s in samplers:
                s.start()
            start = time.perf_counter()
            with path.open("rb") as f:
                reply = httpx.post(f"{api.url}/v1/audio/transcriptions", timeout=args.timeout + 60,
                                   files={"file": ("recording.flac", f, "audio/flac")},
                                   data={"model": "canary-qwen-2.5b", "response_format": "verbose_json"})  # fmt: skip
            wall = time.perf_counter() - start
            server_peak, front_peak = (s.stop() for s in samplers)
            reply.raise_for_status()
            time.sleep(1.0)
            server_after, front_after = group_rss_bytes(server.pid)[0], process_rss_bytes(api.process.pid)
    body = reply.json()
    return {
        "machine": machine(), **facts, "recording_seconds": args.minutes * 60, "flac_mib": round(file_mib, 1),
        "wall_seconds": round(wall, 1), "rtfx": round(args.minutes * 60 / wall, 2), "segments": len(body["segments"]),
        "server_rss_mib": {"idle": round(server_idle / MiB), "peak": round(server_peak / MiB),
                           "after": round(server_after / MiB)},
        "front_rss_mib": {"idle": round(front_idle / MiB), "peak": round(front_peak / MiB),
                          "after": round(front_after / MiB)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("rtfx", "memory"))
    parser.add_argument("--build", type=Path, help="a `canary-trt export` output folder (default: rtfx "
                        "build/bench-full/build-cpu, memory build/demo/build-cpu)")  # fmt: skip
    parser.add_argument("--minutes", type=float, help="recording length (default: rtfx 5.5, memory 60)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per request (default 3600)")
    args = parser.parse_args()
    args.build = args.build or ROOT / ("build/bench-full/build-cpu" if args.what == "rtfx" else "build/demo/build-cpu")
    args.minutes = args.minutes or (5.5 if args.what == "rtfx" else 60.0)
    if not (args.build / "model_repository").is_dir():
        raise SystemExit(f"{args.build}/model_repository not found: run benchmarks/export_full.py or ./build.sh --demo")
    result = run_rtfx(args) if args.what == "rtfx" else run_memory(args)
    out = HERE / f"results/long_form_{args.what}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
