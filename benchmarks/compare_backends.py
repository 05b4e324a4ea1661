"""Side by side, in ONE run, on the same clips and checkpoint: NeMo's own SALM (what users run today), the eager
PyTorch reference, the exported CPU build in ONNX Runtime, and the same build served by Triton over gRPC.

    .venv/bin/python benchmarks/compare_backends.py --checkpoint build/bench-full/checkpoint \\
        --build build/bench-full/build-cpu [--tokens 32] [--threads 2] \\
        [--workloads batch,throughput,latency,steps] [--backends nemo,reference,onnx,triton[,tcpp]] \\
        [--tcpp-dir build/tcpp]

Workloads (`--workloads`), each with exactly `--tokens` new tokens per clip where the backend allows it (random
weights: <|im_end|> is ignored by NeMo (min_new_tokens), the reference and ONNX Runtime (force_length); the
served path has no such switch, so its token counts are reported), model load and one warm-up pass excluded:
- batch, "LibriVox-5 x 32": the 5 LibriVox clips of pocketsphinx-testdata (24.73 s), `--batch-size` (5) per
  batch or in flight, every backend; speed against the best NeMo SALM row (without one: the best reference
  row); SALM's tokens against the reference's of the same precision. Opt-in (`tcpp`, after
  benchmarks/transcribe_cpp/setup.sh): transcribe.cpp 0.2.1 (C++/ggml) at F16 batch `--batch-size` and Q8_0
  batch 1, built to stop at exactly `--tokens`; a line gives the served row's speed over its best row's.
- throughput, "LibriVox-5 x 8": the 5 clips repeated `--repeat` (8) times, 40 clips, `--in-flight` (16)
  requests to the server, against ONNX Runtime at batch 16.
- latency: one request at a time over the 5 clips repeated `--latency-repeat` (3) times, served over gRPC
  vs ONNX Runtime at batch 1 on the same clips: p50 / p90 and their ratio.
- steps: the decoder alone (decoding.GreedyDecoder) at batch 1, 5, 16: time per decode step, warm, from
  (prefill + N steps) - (prefill), against the floor of reading every weight once per step at the machine's
  measured memory bandwidth.
Writes `--out` (benchmarks/results/compare_backends.json) with the machine's description.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: NeMo must not reach the hub

import argparse
import asyncio
import contextlib
import gc
import json
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000
WORKLOADS = ("batch", "throughput", "latency", "steps")
DEFAULT_BACKENDS = ("nemo", "reference", "onnx", "triton")
BACKENDS = DEFAULT_BACKENDS + ("tcpp",)  # tcpp: opt-in, needs benchmarks/transcribe_cpp/setup.sh first
TCPP_ROWS = (("F16", None), ("Q8_0", 1))  # transcribe.cpp's (GGUF, batch) rows; None: the workload's batch
DTYPES = ("fp32", "bf16")
LABELS = {"nemo": "NeMo SALM.generate", "reference": "PyTorch reference", "onnx": "ONNX Runtime",
          "triton": "Triton CPU over gRPC", "tcpp": "transcribe.cpp"}  # fmt: skip


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    waveforms: list
    in_flight: int  # the direct paths' batch size, the served path's concurrency
    baseline_kinds: tuple[str, ...]  # ratios are against the fastest row of the first of these that was measured

    @property
    def audio_seconds(self) -> float:
        return sum(len(w) for w in self.waveforms) / SAMPLE_RATE


@dataclass(frozen=True)
class Plan:
    rates: list[Workload]  # the selected rate workloads (batch, throughput)
    clips: list  # the 5 clips: the latency pass's warm-up, the step timing's prompts
    latency: list | None  # the latency pass's requests in order; None: not selected
    steps: bool


@dataclass(frozen=True)
class Row:
    backend: str  # one of BACKENDS
    label: str
    wall_s: float
    token_ids: list[list[int]]
    dtype: str | None = None  # the torch precision of the nemo and reference rows
    estimated: list[bool] | None = None  # per clip: token count estimated (tcpp rows: no token ids)


def timed(run) -> tuple[float, list]:
    run()  # warm-up pass, excluded
    start = time.perf_counter()
    results = run()
    return time.perf_counter() - start, results


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


# --- rate rows: one function per backend ------------------------------------------------------------


def reference_rows(checkpoint: Path, work: Workload, args) -> list[Row]:
    import torch

    from canary_trt.checkpoint import Checkpoint
    from canary_trt.reference import Reference
    from canary_trt.transcribe import transcribe

    torch.set_num_threads(args.threads)

    def row(dtype: str) -> Row:  # the model is freed when it returns
        model = Reference(Checkpoint.open(checkpoint), dtype=dtype)
        wall, results = timed(lambda: transcribe(model, work.waveforms, work.in_flight, args.tokens, force_length=True))
        label = f"{LABELS['reference']}, {dtype}, batch {work.in_flight}"
        return Row("reference", label, wall, [r.token_ids for r in results], dtype)

    rows = []
    for dtype in args.torch_dtypes:
        rows.append(row(dtype))
        gc.collect()
    return rows


def load_salm(checkpoint: Path):
    """NeMo's SALM.from_pretrained on the checkpoint directory, offline. Its config's `pretrained_llm` (the
    Qwen3 config and tokenizer) is used as written: a relative directory resolves against the working
    directory, hence the chdir; a hub id comes from the local HF cache. from_pretrained builds the LLM from
    that config (pretrained_weights=False) and then loads model.safetensors, leniently (strict=False): the
    check below makes sure the weights really arrived."""
    import torch
    from nemo.collections.speechlm2.models import SALM
    from safetensors import safe_open

    with contextlib.chdir(checkpoint):
        salm = SALM.from_pretrained(str(checkpoint)).eval()
    with safe_open(checkpoint / "model.safetensors", framework="pt") as f:
        for key, module in (("perception.proj.weight", salm.perception.proj), ("embed_tokens.weight", salm.embed_tokens)):
            if not torch.equal(f.get_tensor(key).float(), module.weight):
                raise RuntimeError(f"SALM.from_pretrained did not load {key} from {checkpoint}")
    return salm


def nemo_rows(checkpoint: Path, work: Workload, args) -> list[Row]:
    """The model card's call: prompts with the audio locator tag, greedy, max_new_tokens; min_new_tokens (passed
    through to Hugging Face generate) ignores <|im_end|>. bf16 as NeMo's examples/speechlm2/salm_generate.py
    runs it: the whole model cast with .to(bfloat16), audio in fp32. fp32 is measured first, then the same
    model is cast, as a fresh load + .to(bfloat16) would be (the stored weights are bf16 values)."""
    import torch

    from canary_trt.tokenizer import DEFAULT_INSTRUCTION

    torch.set_num_threads(args.threads)
    salm = load_salm(checkpoint)
    prompt = [{"role": "user", "content": f"{DEFAULT_INSTRUCTION} {salm.audio_locator_tag}"}]

    @torch.inference_mode()
    def generate_all():
        ids = []
        for start in range(0, len(work.waveforms), work.in_flight):
            chunk = work.waveforms[start : start + work.in_flight]
            lengths = torch.tensor([len(w) for w in chunk])
            audio = torch.zeros(len(chunk), int(lengths.max()))
            for i, w in enumerate(chunk):
                audio[i, : len(w)] = torch.from_numpy(w)
            out = salm.generate(prompts=[prompt] * len(chunk), audios=audio, audio_lens=lengths,
                                max_new_tokens=args.tokens, min_new_tokens=args.tokens)  # fmt: skip
            ids += [until(row.tolist(), salm.text_eos_id) for row in out]
        return ids

    rows = []
    for dtype in sorted(args.nemo_dtypes, key=lambda d: d != "fp32"):
        salm.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
        wall, ids = timed(generate_all)
        rows.append(Row("nemo", f"{LABELS['nemo']}, {dtype}, batch {work.in_flight}", wall, ids, dtype))
    return rows


def onnx_row(pipeline, decoder: str, work: Workload, args) -> Row:
    from canary_trt.transcribe import transcribe

    wall, results = timed(lambda: transcribe(pipeline, work.waveforms, work.in_flight, args.tokens, force_length=True))
    return Row("onnx", f"{LABELS['onnx']}, {decoder}, batch {work.in_flight}", wall, [r.token_ids for r in results])


def triton_row(server, decoder: str, work: Workload, args) -> Row:
    from canary_trt.client import AsyncTranscriptionClient

    async def once():
        async with AsyncTranscriptionClient(server.grpc_url, concurrency=work.in_flight) as client:
            return await client.transcribe_many(work.waveforms, sample_rate=SAMPLE_RATE, max_new_tokens=args.tokens)

    wall, results = timed(lambda: asyncio.run(once()))
    label = f"{LABELS['triton']}, {decoder}, {work.in_flight} in flight"
    return Row("triton", label, wall, [r.token_ids for r in results])


def tcpp_rows(tcpp_dir: Path, work: Workload, args) -> list[Row]:
    """transcribe.cpp, each row in a child process of its own venv (transcribe_cpp/rows.py), timed there as
    timed() does. It gives no token ids: a clip that hit the library's cap (built to be exactly --tokens)
    has that many; one that stopped at <|im_end|> has its text re-tokenized (flagged as estimated); the
    rows' token_ids are placeholders (-1) of those lengths."""
    rows_py = _tcpp_module()
    rows = []
    for quant, batch in TCPP_ROWS:
        batch = batch or work.in_flight
        m = rows_py.timed_pass(tcpp_dir, quant, work.waveforms, batch, args.tokens, args.threads)
        label = f"{LABELS['tcpp']} {m['version']} (patched to {m['cap']} new tokens), {quant}, batch {batch}"
        rows.append(Row("tcpp", label, m["wall_s"], [[-1] * n for n in m["tokens"]], estimated=m["estimated"]))
    return rows


def _tcpp_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("transcribe_cpp_rows", HERE / "transcribe_cpp" / "rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- latency: one request at a time ---------------------------------------------------------------------


def latencies(call, warmup: list, clips: list) -> dict:
    """Seconds per call(clip) (which returns its new-token count), one at a time, after one untimed call per
    warm-up clip."""
    for clip in warmup:
        call(clip)
    seconds_each, tokens = [], []
    for clip in clips:
        start = time.perf_counter()
        tokens.append(call(clip))
        seconds_each.append(time.perf_counter() - start)
    p50, p90 = np.percentile(seconds_each, (50, 90), method="linear")
    return {"requests": len(clips), "p50_s": float(p50), "p90_s": float(p90), "mean_s": float(np.mean(seconds_each)),
            "tokens": tokens, "latency_s": seconds_each}  # fmt: skip


def onnx_latency(pipeline, warmup: list, clips: list, args) -> dict:
    from canary_trt.transcribe import transcribe

    def call(clip) -> int:
        (result,) = transcribe(pipeline, [clip], 1, args.tokens, force_length=True)
        return len(result.token_ids)

    return latencies(call, warmup, clips)


def triton_latency(server, warmup: list, clips: list, args) -> dict:
    from canary_trt.client import TranscriptionClient

    with TranscriptionClient(server.grpc_url) as client:

        def call(clip) -> int:
            return len(client.transcribe(clip, sample_rate=SAMPLE_RATE, max_new_tokens=args.tokens).token_ids)

        return latencies(call, warmup, clips)


# --- decoder step time vs its memory-bandwidth floor ----------------------------------------------------


def initializer_bytes(onnx_file: Path) -> int:
    """Bytes of every initializer of the graph, inline or in its external .data file, from their shapes and
    types (the data itself is not read)."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    itemsize = lambda t: onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize  # noqa: E731
    return sum(math.prod(t.dims) * itemsize(t) for t in model.graph.initializer)


def memory_bandwidth(threads: int, repeats: int = 3) -> float:
    """Bytes per second of one read pass over a 1-GiB array: numpy sums of `threads` slices in as many
    threads (numpy reduces without the GIL), best of `repeats`."""
    data = np.ones(2**30 // 4, np.float32)
    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        best = min(seconds(lambda: list(pool.map(np.sum, parts))) for _ in range(repeats))
    return data.nbytes / best


def decoder_steps(pipeline, onnx_file: Path, waveforms: list, args) -> dict:
    """Per batch size: the warm decoder's prefill alone (1 new token: no decode step) and prefill + N steps,
    best of --step-repeats each, with no end id (force_length); step = the difference / N. The floor reads
    every initializer once per step; the KV cache (also read each step, and copied by the graph's Concat) is
    given beside it at mid-decode length, not in the floor."""
    from canary_trt.tokenizer import asr_prompt_ids

    decoder, prompt, n = pipeline.decoder, asr_prompt_ids(pipeline.tokenizer), args.tokens
    embeddings = pipeline.embed_audio(waveforms)
    weights, bandwidth = initializer_bytes(onnx_file), memory_bandwidth(args.threads)
    rows = {}
    for batch in args.step_batches:
        chosen = [embeddings[i % len(embeddings)] for i in range(batch)]

        def best(new_tokens: int) -> float:
            run = lambda: pipeline.generate(chosen, prompt, new_tokens, force_length=True)  # noqa: E731
            run()  # warm-up
            return min(seconds(run) for _ in range(args.step_repeats))

        prefill, whole = best(1), best(1 + n)
        step = (whole - prefill) / n
        context = len(prompt) - 1 + max(len(e) for e in chosen) + n / 2
        kv = 2 * decoder.num_layers * batch * decoder.kv_heads * decoder.head_dim * context * 4
        rows[str(batch)] = {"prefill_s": prefill, "step_s": step, "floor_s": weights / bandwidth,
                            "step_over_floor": step * bandwidth / weights, "kv_cache_bytes_mid_decode": kv}  # fmt: skip
    return {"decoder": onnx_file.name, "weight_bytes": weights, "bandwidth_bytes_per_s": bandwidth,
            "bandwidth_threads": args.threads, "steps": n, "rows": rows}  # fmt: skip


# --- the runs: each backend once, over every selected workload ------------------------------------------


def run_onnx(build: Path, decoder: str, plan: Plan, args) -> dict:
    from canary_trt.onnx_pipeline import OnnxPipeline

    pipeline = OnnxPipeline(build, threads=args.threads)
    done = {"rows": {w.key: onnx_row(pipeline, decoder, w, args) for w in plan.rates}}
    if plan.latency:
        done["latency"] = onnx_latency(pipeline, plan.clips, plan.latency, args)
    if plan.steps:
        done["steps"] = decoder_steps(pipeline, build / decoder, plan.clips, args)
    return done


def served_repository(build: Path, overrides: dict, tmp: Path) -> Path:
    """The build's model repository, or (with --repository overrides) one filled from the same templates with
    those values changed (export/repository.py: queue delays, threads), for tuning by measurement."""
    if not overrides:
        return build / "model_repository"
    from canary_trt.export.repository import write_model_repository
    from canary_trt.export_info import read_export_info

    return write_model_repository(build, read_export_info(build), overrides, out=tmp / "model_repository")


def run_triton(build: Path, decoder: str, plan: Plan, args) -> dict:
    from canary_trt.server import TritonServer

    with tempfile.TemporaryDirectory() as tmp, TritonServer(served_repository(build, args.repository, Path(tmp))) as server:
        done = {"rows": {w.key: triton_row(server, decoder, w, args) for w in plan.rates}}
        if plan.latency:
            done["latency"] = triton_latency(server, plan.clips, plan.latency, args)
    return done


# --- report ----------------------------------------------------------------------------------------------


def until(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def token_summary(counts: list[int], estimated: list[bool] | None = None) -> str:
    if any(estimated or []):  # "~": re-tokenized from the text
        return ",".join(f"~{n}" if e else str(n) for n, e in zip(counts, estimated))
    return f"{counts[0]} each" if len(set(counts)) == 1 else ",".join(map(str, counts))


def baseline(rows: list[Row], kinds: tuple[str, ...]) -> Row | None:
    """The fastest row of the first backend kind in `kinds` that was measured."""
    for kind in kinds:
        measured = [r for r in rows if r.backend == kind]
        if measured:
            return min(measured, key=lambda r: r.wall_s)
    return None


def agreement(nemo: Row, reference: Row) -> dict:
    """Per clip, how many leading tokens are the same (after the first difference greedy paths diverge)."""
    prefixes = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                for a, b in zip(nemo.token_ids, reference.token_ids)]  # fmt: skip
    identical = sum(a == b for a, b in zip(nemo.token_ids, reference.token_ids))
    return {"nemo": nemo.label, "reference": reference.label, "identical_clips": identical,
            "clips": len(prefixes), "common_prefix": prefixes}  # fmt: skip


def report_rates(work: Workload, rows: list[Row], args) -> dict:
    base = baseline(rows, work.baseline_kinds)
    print(f"\n### {work.title}: {len(work.waveforms)} clips, {work.audio_seconds:.2f} s of audio, {args.tokens} new "
          f"tokens, {work.in_flight} per batch / in flight, {args.threads} threads\n")  # fmt: skip
    print(f"| backend | wall s | RTFx | vs {base.label if base else '(no baseline row)'} | new tokens per clip |")
    print("|---|---|---|---|---|")
    out = {"title": work.title, "clips": len(work.waveforms), "audio_seconds": work.audio_seconds,
           "in_flight": work.in_flight, "baseline": base.label if base else None, "rows": {}}  # fmt: skip
    for r in rows:
        rtfx, counts = work.audio_seconds / r.wall_s, [len(t) for t in r.token_ids]
        ratio = base.wall_s / r.wall_s if base else None
        out["rows"][r.label] = {"backend": r.backend, "wall_s": r.wall_s, "rtfx": rtfx, "vs_baseline": ratio,
                                "tokens": counts}  # fmt: skip
        if r.estimated is not None:
            out["rows"][r.label]["tokens_estimated"] = r.estimated
        summary = token_summary(counts, r.estimated)
        print(f"| {r.label} | {r.wall_s:.2f} | {rtfx:.2f} | {f'{ratio:.2f}x' if base else '-'} | {summary} |")
    served, tcpp = baseline(rows, ("triton",)), baseline(rows, ("tcpp",))
    if served and tcpp:
        out["served_over_tcpp_best"] = tcpp.wall_s / served.wall_s
        print(f"\nserved / transcribe.cpp best ({tcpp.label}): {out['served_over_tcpp_best']:.2f}x the speed")
    nemo, reference = ([r for r in rows if r.backend == kind] for kind in ("nemo", "reference"))
    same_dtype = [(n, r) for n in nemo for r in reference if n.dtype == r.dtype]
    if same_dtype:
        print()
        out["agreement"] = [agreement(n, r) for n, r in same_dtype]
    for a in out.get("agreement", []):
        print(f"tokens, {a['nemo']} vs {a['reference']}: {a['identical_clips']}/{a['clips']} clips identical; "
              f"common prefix {','.join(map(str, a['common_prefix']))} of {args.tokens}")  # fmt: skip
    return out


def report_latency(latency: dict) -> dict:
    requests = next(iter(latency.values()))["requests"]
    print(f"\n### Latency, one request at a time: {requests} requests (the 5 clips repeated)\n")
    print("| path | p50 ms | p90 ms | mean ms | new tokens per request |\n|---|---|---|---|---|")
    paths = {"triton": "served over gRPC (TranscriptionClient)", "onnx": "ONNX Runtime, batch 1, no server"}
    for key, name in paths.items():
        if m := latency.get(key):
            ms = " | ".join(f"{m[p] * 1e3:.1f}" for p in ("p50_s", "p90_s", "mean_s"))
            print(f"| {name} | {ms} | {token_summary(m['tokens'])} |")
    if {"triton", "onnx"} <= latency.keys():
        ratio = {p: latency["triton"][f"{p}_s"] / latency["onnx"][f"{p}_s"] for p in ("p50", "p90")}
        latency["served_over_direct"] = ratio
        print(f"\nserved / direct: p50 {ratio['p50']:.2f}x, p90 {ratio['p90']:.2f}x")
    return latency


def report_steps(steps: dict) -> dict:
    print(f"\n### Decoder step time vs its memory-bandwidth floor ({steps['decoder']}, {steps['steps']} steps)\n")
    print(f"weights read per step: {steps['weight_bytes'] / 1e6:.1f} MB (initializers, incl. the .data file); measured "
          f"bandwidth: {steps['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (numpy sum over 1 GiB, "
          f"{steps['bandwidth_threads']} threads, best of 3)\n")  # fmt: skip
    print("| batch | prefill ms | step ms | floor ms | step / floor | KV cache at mid-decode, MB |")
    print("|---|---|---|---|---|---|")
    for batch, r in steps["rows"].items():
        print(f"| {batch} | {r['prefill_s'] * 1e3:.1f} | {r['step_s'] * 1e3:.2f} | {r['floor_s'] * 1e3:.2f} | "
              f"{r['step_over_floor']:.2f} | {r['kv_cache_bytes_mid_decode'] / 1e6:.1f} |")  # fmt: skip
    return steps


# --- main ------------------------------------------------------------------------------------------------


def parse_args():
    def names(allowed):
        def parse(text: str) -> list[str]:
            chosen = [t for t in text.split(",") if t]
            if unknown := set(chosen) - set(allowed):
                raise argparse.ArgumentTypeError(f"unknown {','.join(sorted(unknown))}; choose from {','.join(allowed)}")
            return chosen

        return parse

    def overrides(text: str) -> dict[str, str]:
        pairs = [t.split("=", 1) for t in text.split(",") if t]
        if any(len(p) != 2 for p in pairs):
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE,..., got {text!r}")
        return dict(pairs)

    def ints(text: str) -> list[int]:
        return [int(t) for t in text.split(",") if t]

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--build", type=Path, required=True, help="a CPU build of the same checkpoint")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per clip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", type=names(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--backends", type=names(BACKENDS), default=list(DEFAULT_BACKENDS),
                        help=f"default {','.join(DEFAULT_BACKENDS)}; tcpp (transcribe.cpp) is opt-in")
    parser.add_argument("--tcpp-dir", type=Path, default=HERE.parent / "build" / "tcpp",
                        help="tcpp rows: the --out of benchmarks/transcribe_cpp/setup.sh (its setup.json)")
    parser.add_argument("--torch-dtypes", type=names(DTYPES), default=["bf16", "fp32"], help="reference precisions")
    parser.add_argument("--nemo-dtypes", type=names(DTYPES), default=["fp32", "bf16"], help="NeMo SALM precisions")
    parser.add_argument("--batch-size", type=int, default=5, help="batch workload: batch / concurrency")
    parser.add_argument("--repeat", type=int, default=8, help="throughput workload: times the 5 clips are repeated")
    parser.add_argument("--in-flight", type=int, default=16, help="throughput workload: batch / concurrency")
    parser.add_argument("--latency-repeat", type=int, default=3, help="latency: times the 5 clips are repeated")
    parser.add_argument("--step-batches", type=ints, default=[1, 5, 16])
    parser.add_argument("--step-repeats", type=int, default=3, help="steps: best of this many timed runs")
    parser.add_argument("--repository", type=overrides, default={}, metavar="KEY=VALUE,...",
                        help="served rows: template values to change, e.g. queue_delay_us=0,encoder_threads=1")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compare_backends.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if "steps" in args.workloads and "onnx" not in args.backends:
        raise SystemExit("--workloads steps times the ONNX Runtime decoder: add onnx to --backends")
    tcpp_setup = None
    if "tcpp" in args.backends:  # checked before anything heavy runs
        if "batch" not in args.workloads:
            raise SystemExit("the tcpp rows are on the batch workload: add batch to --workloads")
        args.tcpp_dir = args.tcpp_dir.resolve()
        tcpp_setup = _tcpp_module().read_setup(args.tcpp_dir)
        if tcpp_setup["max_new_tokens"] != args.tokens:
            raise SystemExit(f"{args.tcpp_dir}'s transcribe.cpp stops at {tcpp_setup['max_new_tokens']} new tokens, "
                             f"not --tokens {args.tokens}: run setup.sh --tokens {args.tokens} --out ANOTHER_DIR")  # fmt: skip
    checkpoint, build = args.checkpoint.resolve(), args.build.resolve()
    if tcpp_setup and tcpp_setup.get("checkpoint") not in (None, str(checkpoint)):
        raise SystemExit(f"{args.tcpp_dir}'s GGUFs are from {tcpp_setup['checkpoint']}, not {checkpoint}")

    from canary_trt.audio import load_audio
    from canary_trt.client.machine import describe_machine
    from canary_trt.contract import LIBRIVOX_DIR
    from canary_trt.export_info import read_export_info

    clips = [load_audio(p) for p in sorted(LIBRIVOX_DIR.glob("*.wav"))]
    n, repeated = len(clips), clips * args.repeat
    rates = [Workload("batch", f"LibriVox-{n} x {args.tokens}", clips, args.batch_size, ("nemo", "reference")),
             Workload("throughput", f"LibriVox-{n} x {args.repeat}", repeated, args.in_flight, ("onnx",))]  # fmt: skip
    plan = Plan([w for w in rates if w.key in args.workloads], clips,
                clips * args.latency_repeat if "latency" in args.workloads else None, "steps" in args.workloads)
    decoder = read_export_info(build)["decoder"]

    # Heaviest first, one model in memory at a time: the torch rows, transcribe.cpp (a child process each),
    # then ONNX Runtime, then the server.
    rows = {w.key: [] for w in plan.rates}
    batch = next((w for w in plan.rates if w.key == "batch"), None)
    if batch and "nemo" in args.backends and args.nemo_dtypes:
        rows["batch"] += nemo_rows(checkpoint, batch, args)
    if batch and "reference" in args.backends:
        rows["batch"] += reference_rows(checkpoint, batch, args)
    if batch and tcpp_setup:
        rows["batch"] += tcpp_rows(args.tcpp_dir, batch, args)
    measured = {}
    for kind, run in (("onnx", run_onnx), ("triton", run_triton)):
        if kind in args.backends:
            measured[kind] = run(build, decoder, plan, args)
            for key, row in measured[kind]["rows"].items():
                rows[key].append(row)
            gc.collect()

    machine = describe_machine()
    print(f"\nMachine: {machine['cpu']}, {machine['cpu_cores']} cores ({', '.join(machine['cpu_flags'] or [])}), "
          f"{machine['memory_gib']} GiB, GPU {machine['gpu']}; build {build.name}, decoder {decoder}")  # fmt: skip
    packages = ("torch", "nemo-toolkit", "transformers", "onnxruntime")
    result = {"machine": machine, "versions": {p: version(p) for p in packages}, "checkpoint": str(checkpoint),
              "build": str(build), "decoder": decoder, "tokens": args.tokens, "threads": args.threads,
              "repository_overrides": args.repository, "transcribe_cpp": tcpp_setup,
              "workloads": {w.key: report_rates(w, rows[w.key], args) for w in plan.rates}}  # fmt: skip
    if latency := {k: m["latency"] for k, m in measured.items() if "latency" in m}:
        result["latency"] = report_latency(latency)
    if "steps" in measured.get("onnx", {}):
        result["steps"] = report_steps(measured["onnx"]["steps"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
