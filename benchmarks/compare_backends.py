"""Side by side, in ONE run, on the same clips and checkpoint: (a) the eager PyTorch reference, batched as
NeMo evaluates, (b) the exported CPU build in ONNX Runtime, (c) the same build served by Triton over gRPC.

    .venv/bin/python benchmarks/compare_backends.py --checkpoint build/bench-full/checkpoint \\
        --build build/bench-full/build-cpu [--tokens 32] [--batch-size 5] [--threads 2]

Workload "LibriVox-5 x 32": the 5 LibriVox clips of pocketsphinx-testdata (24.73 s), exactly `--tokens`
new tokens per clip (random weights: <|im_end|> is ignored where the backend allows it; the served path
has no such switch, so its token counts are checked and reported), model load and one warm-up pass
excluded. Prints RTFx (audio seconds / wall seconds of the timed pass) and the ratios c/a and b/a;
writes benchmarks/results/compare_backends.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(run) -> tuple[float, list]:
    run()  # warm-up pass, excluded
    start = time.perf_counter()
    results = run()
    return time.perf_counter() - start, results


def bench_reference(checkpoint, waveforms, args, dtype):
    import torch

    from canary_trt.checkpoint import Checkpoint
    from canary_trt.reference import Reference
    from canary_trt.transcribe import transcribe

    torch.set_num_threads(args.threads)
    model = Reference(Checkpoint.open(checkpoint), dtype=dtype)
    wall, results = timed(lambda: transcribe(model, waveforms, args.batch_size, args.tokens, force_length=True))
    return wall, [len(r.token_ids) for r in results]


def bench_onnx(build, waveforms, args):
    from canary_trt.onnx_pipeline import OnnxPipeline
    from canary_trt.transcribe import transcribe

    pipeline = OnnxPipeline(build, threads=args.threads)
    wall, results = timed(lambda: transcribe(pipeline, waveforms, args.batch_size, args.tokens, force_length=True))
    return wall, [len(r.token_ids) for r in results]


def bench_triton(build, waveforms, args):
    from canary_trt.client import AsyncTranscriptionClient
    from canary_trt.server import TritonServer

    with TritonServer(Path(build) / "model_repository") as server:

        async def once():
            async with AsyncTranscriptionClient(server.grpc_url, concurrency=args.batch_size) as client:
                return await client.transcribe_many(waveforms, sample_rate=16000, max_new_tokens=args.tokens)

        wall, results = timed(lambda: asyncio.run(once()))
    return wall, [len(r.token_ids) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--build", type=Path, required=True, help="a CPU build of the same checkpoint")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=5, help="reference/ONNX batch; Triton concurrency")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--torch-dtypes", default="bf16,fp32", help="reference precisions to measure")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from canary_trt.audio import load_audio
    from canary_trt.contract import LIBRIVOX_DIR
    from canary_trt.export_info import read_export_info

    waveforms = [load_audio(p) for p in sorted(LIBRIVOX_DIR.glob("*.wav"))]
    audio = sum(len(w) for w in waveforms) / 16000
    rows = {}
    for dtype in args.torch_dtypes.split(","):
        rows[f"(a) PyTorch reference, {dtype}, batch {args.batch_size}"] = bench_reference(args.checkpoint, waveforms, args, dtype)
        gc.collect()
    decoder = read_export_info(args.build)["decoder"]
    rows[f"(b) ONNX Runtime, {decoder}, batch {args.batch_size}"] = bench_onnx(args.build, waveforms, args)
    gc.collect()
    rows[f"(c) Triton CPU over gRPC, {decoder}, concurrency {args.batch_size}"] = bench_triton(args.build, waveforms, args)

    print(f"\nLibriVox-{len(waveforms)} x {args.tokens}: {audio:.2f} s of audio, {args.threads} threads\n")
    print("| backend | wall s | RTFx | new tokens per clip |\n|---|---|---|---|")
    rtfx = {}
    for name, (wall, tokens) in rows.items():
        rtfx[name] = audio / wall
        print(f"| {name} | {wall:.2f} | {rtfx[name]:.2f} | {','.join(map(str, tokens))} |")
    base = next(iter(rtfx))  # the first reference precision is the baseline
    b, c = (next(k for k in rtfx if k.startswith(p)) for p in ("(b)", "(c)"))
    print(f"\nb/a = {rtfx[b] / rtfx[base]:.2f}x   c/a = {rtfx[c] / rtfx[base]:.2f}x   (a = {base})")
    out = HERE / "results" / "compare_backends.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"audio_seconds": audio, "tokens": args.tokens, "threads": args.threads,
                               "rows": {k: {"wall_s": w, "rtfx": audio / w, "tokens": t} for k, (w, t) in rows.items()}},
                              indent=2) + "\n")  # fmt: skip
    print(f"results: {out}")


if __name__ == "__main__":
    main()
