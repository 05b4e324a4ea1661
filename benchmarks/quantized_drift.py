"""How far the quantized CPU graphs (int8, int4) drift from the exact fp32 graphs of the same build, and what
they buy: fp32, int8 and int4 side by side in one run.

    .venv/bin/python benchmarks/quantized_drift.py --build build/bench-full/build-cpu [--tokens 32] [--threads 2]

The build must hold every precision's graphs (contract.CPU_GRAPHS): an `export --precision int8` build has
fp32 and int8; write the int4 decoder beside them without exporting again:

    .venv/bin/python -c "from canary_trt.export.quantize import quantize_decoder as q; \
        q('BUILD/decoder.onnx', 'BUILD/decoder_int4.onnx', 4)"

On the LibriVox clips, each quantized path against fp32: encoder embeddings (max abs and relative
difference); free-running greedy tokens (position-wise agreement, and the first token, which sees no earlier
drift); the decoder alone, teacher-forced on fp32's audio embeddings and fp32's tokens (top-1 agreement at
every step, and the logits' relative error: drift that free-running agreement hides once one token differs);
the wall time of each path (one warm-up pass excluded) and the decoder's size on disk. And, free of what the
network makes of it, single MatMuls as served: layer 0's first projection and the lm_head taken from the
quantized decoder file and run alone on Gaussian rows, against the fp32 weights in fp64.

Random weights amplify any perturbation (0.1% noise on the audio embeddings alone moves the fp32 logits by
~10%: results/int4_choices.json), so end-to-end agreement here is a lower bound on what real weights would
show, not a quality measure; the per-MatMul errors compare the precisions; measure WER with the real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "int8", "int4")


def forced_logits(decoder, requests, tokens: list[list[int]]) -> np.ndarray:
    """[B, T, V] logits of `decoder` fed `tokens` instead of its own argmax (teacher forcing), through the
    serving path's own DecodeBatch (its prefill and steps; each step's logits caught at the decoder's run).
    The requests must run T steps: end_id -1, max_new_tokens >= T, so the rows keep their order."""
    from canary_trt.decoding import DecodeBatch

    caught, run = [], decoder._run

    def catch(*args):
        logits, cache = run(*args)
        caught.append(logits.copy())
        return logits, cache

    decoder._run = catch
    try:
        batch = DecodeBatch(decoder)
        batch.join(dict(enumerate(requests)))
        for t in range(len(tokens[0]) - 1):
            batch.tokens[:] = [row[t] for row in tokens]
            batch.step()
    finally:
        del decoder._run  # the method again
    return np.stack(caught, axis=1)


def run_path(pipeline, waveforms, prompt, tokens: int, reference: dict | None = None) -> dict:
    """One path: two timed passes (the first warms up), then, against the fp32 run `reference`, the decoder
    teacher-forced on fp32's audio embeddings and tokens."""
    from canary_trt.decoding import Request, splice_fake_ids

    for _ in range(2):
        start = time.perf_counter()
        embeddings = pipeline.embed_audio(waveforms)
        encoded = time.perf_counter()
        generated = pipeline.generate(embeddings, prompt, tokens, force_length=True)
        done = time.perf_counter()
    source = reference or {"embeddings": embeddings, "tokens": generated}
    requests = [Request(splice_fake_ids(prompt, pipeline.placeholder_id, len(e), pipeline.vocab_size), e, tokens, -1)
                for e in source["embeddings"]]  # fmt: skip
    return {"embeddings": embeddings, "tokens": generated, "encoder_s": encoded - start, "decoder_s": done - encoded,
            "forced": forced_logits(pipeline.decoder, requests, source["tokens"])}  # fmt: skip


def drift(exact: dict, run: dict, clips: int) -> dict:
    pairs = list(zip(exact["embeddings"], run["embeddings"]))
    same = sum(p == q for x, y in zip(exact["tokens"], run["tokens"]) for p, q in zip(x, y))
    f, q = exact["forced"], run["forced"]
    return {
        "embedding_max_abs_diff": max(float(np.abs(x - y).max()) for x, y in pairs),
        "embedding_max_rel_diff": max(float(np.abs(x - y).max() / np.abs(x).max()) for x, y in pairs),
        "token_agreement": same / sum(map(len, exact["tokens"])),
        "first_token_agreement": sum(x[:1] == y[:1] for x, y in zip(exact["tokens"], run["tokens"])) / clips,
        "forced_top1_agreement": float((f.argmax(-1) == q.argmax(-1)).mean()),
        "forced_logits_rel_error": float((np.linalg.norm(q - f, axis=-1) / np.linalg.norm(f, axis=-1)).mean()),
        "forced_logits_max_abs_diff": float(np.abs(q - f).max()),
    }


def matmul_drift(build: Path, quantized_decoder: str, rows: int = 64) -> dict:
    """Layer 0's first projection and the lm_head as served: each MatMulNBits node with its weights, copied out
    of the quantized decoder and run alone, against x @ W in fp64 with W from decoder.onnx."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    from canary_trt.contract import DECODER_ONNX
    from canary_trt.export.quantize import lm_head_name

    def tensor(graph, name):
        found = onnx.TensorProto()
        found.CopyFrom(next(t for t in graph.initializer if t.name == name))
        if uses_external_data(found):
            load_external_data_for_tensor(found, str(build))
        return found

    fp32, quantized = (onnx.load(str(build / f), load_external_data=False) for f in (DECODER_ONNX, quantized_decoder))
    weights = {t.name for t in fp32.graph.initializer}
    first = next(n.name for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    rng, result = np.random.default_rng(0), {}
    for label, name in (("layer0_first_matmul", first), ("lm_head", lm_head_name(fp32.graph))):
        w = numpy_helper.to_array(tensor(fp32.graph, next(n for n in fp32.graph.node if n.name == name).input[1]))
        node = onnx.NodeProto()
        node.CopyFrom(next(n for n in quantized.graph.node if n.name.startswith(name + "_Q")))
        node.input[0], node.output[0] = "x", "y"
        graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, w.shape[0]])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, w.shape[1]])],
                                  [tensor(quantized.graph, i) for i in node.input[1:] if i])  # fmt: skip
        session = ort.InferenceSession(helper.make_model(graph, opset_imports=quantized.opset_import).SerializeToString(),
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        x = rng.standard_normal((rows, w.shape[0])).astype(np.float32)
        y, exact = session.run(None, {"x": x})[0], x.astype(np.float64) @ w
        bits = next(a.i for a in node.attribute if a.name == "bits")
        result[label] = {"bits": bits, "rel_error": float(np.linalg.norm(y - exact) / np.linalg.norm(exact))}
        if label == "lm_head":
            result[label]["top1_agreement"] = float((y.argmax(1) == exact.argmax(1)).mean())
    return result


def file_gb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.is_file()) / 1e9, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, required=True, help="a CPU build holding fp32, int8 and int4 graphs")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated; fp32 first")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quantized_drift.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import onnxruntime

    from canary_trt.audio import load_audio
    from canary_trt.client.machine import describe_machine
    from canary_trt.contract import CPU_GRAPHS, LIBRIVOX_DIR
    from canary_trt.onnx_pipeline import OnnxPipeline
    from canary_trt.tokenizer import asr_prompt_ids

    precisions = args.precisions.split(",")
    if precisions[0] != "fp32" or not set(precisions) <= set(CPU_GRAPHS):
        raise SystemExit(f"--precisions: fp32 first, then any of {', '.join(CPU_GRAPHS)}")
    missing = [f for p in precisions for f in CPU_GRAPHS[p].values() if "llm" not in f and not (args.build / f).is_file()]
    if missing:
        raise SystemExit(f"{args.build} lacks {', '.join(missing)} (module doc: how to write them)")
    waveforms = [load_audio(p) for p in sorted(LIBRIVOX_DIR.glob("*.wav"))]
    audio = sum(len(w) for w in waveforms) / 16000
    runs = {}
    for name in precisions:
        pipeline = OnnxPipeline(args.build, threads=args.threads, precision=name)
        runs[name] = run_path(pipeline, waveforms, asr_prompt_ids(pipeline.tokenizer), args.tokens, runs.get("fp32"))
        del pipeline
    result = {
        "machine": {**describe_machine(), "onnxruntime": onnxruntime.__version__, "threads": args.threads},
        "audio_seconds": round(audio, 2), "clips": len(waveforms), "tokens_per_clip": args.tokens,
        "paths": {name: {"encoder": CPU_GRAPHS[name]["encoder"], "decoder": CPU_GRAPHS[name]["decoder"],
                         "encoder_s": round(run["encoder_s"], 2), "decoder_s": round(run["decoder_s"], 2),
                         "rtfx": round(audio / (run["encoder_s"] + run["decoder_s"]), 2),
                         "decoder_gb": file_gb(args.build / CPU_GRAPHS[name]["decoder"]),
                         "encoder_gb": file_gb(args.build / CPU_GRAPHS[name]["encoder"]),
                         **({} if name == "fp32" else {**drift(runs["fp32"], run, len(waveforms)),
                                                       "matmul": matmul_drift(args.build, CPU_GRAPHS[name]["decoder"])})}
                  for name, run in runs.items()},
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
