"""How far the int8 CPU build drifts from the exact fp32 graphs of the same build, and what it buys.

    .venv/bin/python benchmarks/int8_drift.py --build build/bench-full/build-cpu [--tokens 32] [--threads 2]

On the LibriVox clips: encoder embeddings (max abs and relative difference), greedy tokens (position-wise
agreement of free-running decoding, and the first token, which sees no earlier drift) and the wall time of
each path (one warm-up pass excluded). Random weights have nearly flat logits, so agreement here is a
lower bound on what real weights would show, not a quality measure; measure WER with the real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, required=True, help="a CPU build exported with --precision int8")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from canary_trt.audio import load_audio
    from canary_trt.contract import LIBRIVOX_DIR
    from canary_trt.onnx_pipeline import OnnxPipeline
    from canary_trt.tokenizer import asr_prompt_ids

    waveforms = [load_audio(p) for p in sorted(LIBRIVOX_DIR.glob("*.wav"))]
    audio = sum(len(w) for w in waveforms) / 16000
    runs = {}
    for name, exact in (("fp32", True), ("int8", False)):
        pipeline = OnnxPipeline(args.build, threads=args.threads, exact=exact)
        prompt = asr_prompt_ids(pipeline.tokenizer)
        for _ in range(2):  # the first pass warms up
            start = time.perf_counter()
            embeddings = pipeline.embed_audio(waveforms)
            encoded = time.perf_counter()
            tokens = pipeline.generate(embeddings, prompt, args.tokens, force_length=True)
            done = time.perf_counter()
        runs[name] = {"embeddings": embeddings, "tokens": tokens, "encoder_s": encoded - start, "decoder_s": done - encoded}
        del pipeline
    a, b = runs["fp32"], runs["int8"]
    abs_diff = max(float(np.abs(x - y).max()) for x, y in zip(a["embeddings"], b["embeddings"]))
    rel_diff = max(float(np.abs(x - y).max() / np.abs(x).max()) for x, y in zip(a["embeddings"], b["embeddings"]))
    same = [sum(p == q for p, q in zip(x, y)) for x, y in zip(a["tokens"], b["tokens"])]
    result = {
        "audio_seconds": audio, "tokens_per_clip": args.tokens,
        "embedding_max_abs_diff": abs_diff, "embedding_max_rel_diff": rel_diff,
        "token_agreement": sum(same) / sum(map(len, a["tokens"])),
        "first_token_agreement": sum(x[:1] == y[:1] for x, y in zip(a["tokens"], b["tokens"])) / len(waveforms),
        **{f"{k}_{part}_s": round(v[f"{part}_s"], 2) for k, v in runs.items() for part in ("encoder", "decoder")},
    }  # fmt: skip
    for name in runs:
        result[f"{name}_rtfx"] = audio / (runs[name]["encoder_s"] + runs[name]["decoder_s"])
    print(json.dumps(result, indent=2))
    out = HERE / "results" / "int8_drift.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
