"""The fastest this machine could possibly run the LibriVox-5 x 32 workload: a floor from its measured
arithmetic rate and memory bandwidth, against which the CPU speed goals (issue 16) can be judged.

    .venv/bin/python benchmarks/cpu_floor.py --build build/bench-full/build-cpu [--threads 2] [--tokens 32]

- Arithmetic: the encoder's and the decoder's weight matrices are each used once per audio embedding (the
  encoder, a lower bound: its subsampling convolutions run at 2-8x that rate) and once per prompt token (the
  prefill; the lm_head once per clip), 2 FLOPs per weight. Their floor is those FLOPs at the fastest GEMM
  rate measured here among ONNX Runtime's kernels (fp32 MatMul, and MatMulNBits at 8 and 4 bits with the
  export's block sizes and int8 compute), on the prefill's own shape: M = the batch's prompt tokens,
  2048 x 6144 (Qwen3-1.7B's MLP).
- Bandwidth: each decode step reads every decoder weight once; its floor is the smallest decoder graph's
  weight bytes over the measured read bandwidth (`compare_backends.memory_bandwidth`).
- The floor ignores attention products, the front end, the KV cache, Python and the server: it is what no
  implementation on this machine can beat, not an estimate of what one reaches.
Writes `--out` (benchmarks/results/cpu_floor.json) with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare_backends import initializer_bytes, memory_bandwidth  # noqa: E402

from canary_trt.audio import load_audio  # noqa: E402
from canary_trt.client.machine import describe_machine  # noqa: E402
from canary_trt.contract import LIBRIVOX_DIR, PROMPT_TOKENS, SAMPLE_RATE, audio_rows  # noqa: E402

K, N = 2048, 6144  # Qwen3-1.7B's hidden and MLP widths: the prefill's most common GEMM
DECODERS = ("decoder.onnx", "decoder_int8.onnx", "decoder_int4.onnx")


def matrix_weights(onnx_file: Path, vocab: int | None = None) -> tuple[int, int]:
    """(weights of the 2-D initializers without a vocabulary-wide dim, those of the ones with it): the matrices
    used per token, and the lm_head / embedding used once per row (or not at all)."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    mats = [list(t.dims) for t in model.graph.initializer if len(t.dims) == 2]
    body = sum(math.prod(d) for d in mats if vocab not in d)
    return body, sum(math.prod(d) for d in mats if vocab in d)


def gemm_rates(m: int, threads: int, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of [m, K] x [K, N] in ONNX Runtime: fp32 MatMul and the export's MatMulNBits at 8 and 4 bits."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import matmul_nbits_quantizer

    from canary_trt.export.quantize import ACCURACY_LEVEL, BLOCK_SIZE

    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)  # it logs every node at INFO

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((K, N), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])  # fmt: skip
    fp32 = lambda: helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])  # noqa: E731
    models = {"fp32": fp32()}
    for bits in (8, 4):  # the quantizer rewrites the model it is given: each gets its own
        quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(fp32(), bits=bits,
                                                                block_size=BLOCK_SIZE[bits], accuracy_level=ACCURACY_LEVEL)  # fmt: skip
        quantizer.process()
        models[f"int{bits}"] = quantizer.model.model
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    x = np.random.default_rng(1).standard_normal((m, K), np.float32)
    rates = {}
    for name, model in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "gemm.onnx"
            onnx.save(model, str(path))
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, {"x": x})
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, {"x": x})
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * m * K * N / best
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, required=True, help="a full-size CPU build (fp32, plus int8/int4 if built)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per clip")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu_floor.json")
    args = parser.parse_args()

    clips = [load_audio(p) for p in sorted(LIBRIVOX_DIR.glob("*.wav"))]
    audio_s = sum(c.size for c in clips) / SAMPLE_RATE
    embeddings = sum(audio_rows(c.size) for c in clips)
    prompt_tokens = embeddings + len(clips) * (PROMPT_TOKENS - 1)  # the placeholder becomes the clip's rows
    vocab = int(np.load(args.build / "embed_tokens.npy", mmap_mode="r").shape[0])
    encoder_weights, _ = matrix_weights(args.build / "encoder.onnx")
    decoder_weights, head_weights = matrix_weights(args.build / "decoder.onnx", vocab)

    rates = gemm_rates(prompt_tokens, args.threads)
    best_rate = max(rates.values())
    bandwidth = memory_bandwidth(args.threads)
    decoders = {name: initializer_bytes(args.build / name) for name in DECODERS if (args.build / name).is_file()}
    step_floor = min(decoders.values()) / bandwidth

    encoder_flops = 2 * encoder_weights * embeddings
    prefill_flops = 2 * decoder_weights * prompt_tokens + 2 * head_weights * len(clips)
    floors = {"encoder_s": encoder_flops / best_rate, "prefill_s": prefill_flops / best_rate,
              "decode_s": args.tokens * step_floor}  # fmt: skip
    total = sum(floors.values())
    result = {"machine": describe_machine(), "onnxruntime": version("onnxruntime"), "threads": args.threads, "clips": len(clips), "audio_seconds": audio_s,
              "tokens_per_clip": args.tokens, "audio_embeddings": embeddings, "prompt_tokens": prompt_tokens,
              "encoder_matrix_weights": encoder_weights, "decoder_matrix_weights": decoder_weights,
              "lm_head_weights": head_weights, "gemm_flops_per_s": rates, "bandwidth_bytes_per_s": bandwidth,
              "decoder_weight_bytes": decoders, "decode_step_floor_s": step_floor, "floor_s": floors,
              "floor_total_s": total, "best_possible_rtfx": audio_s / total}  # fmt: skip

    print(f"LibriVox-{len(clips)} x {args.tokens}: {audio_s:.2f} s of audio, {embeddings} audio embeddings, "
          f"{prompt_tokens} prompt tokens, {args.threads} threads")  # fmt: skip
    print("GEMM [%d x %d] x [%d x %d]: %s GFLOP/s" % (prompt_tokens, K, K, N,
          ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items())))  # fmt: skip
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s; decode step floor {step_floor * 1e3:.0f} ms "
          f"({min(decoders, key=decoders.get)})")  # fmt: skip
    print("floor: " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in floors.items())
          + f"; total {total:.2f} s -> best possible RTFx {audio_s / total:.2f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
