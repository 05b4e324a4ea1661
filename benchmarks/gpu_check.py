"""RTFx of the PyTorch reference (NeMo perception + HF Qwen3, bf16) on one CUDA GPU, batch 1 / 32 / 192.

    python3 benchmarks/gpu_check.py --checkpoint /tmp/ckpt [--device cuda] [--batch-sizes 1,32,192]
                                    [--new-tokens 32] [--audio-dir DIR] [--json FILE]

Run by benchmarks/gpu_check.sh on a GPU machine that has PyTorch but no NeMo/TensorRT (the missing
packages travel as wheels). It runs the package's own code: `Reference(checkpoint, "bf16", device)` and
`canary_trt.transcribe.transcribe(..., force_length=True)`: random weights never stop at a sensible
length, so every clip generates exactly `--new-tokens` tokens (end of turn masked until then).

Timing covers `canary_trt.transcribe.transcribe` (front end, encoder, splice, HF greedy generation,
detokenization) over the whole workload at one batch size, after one untimed warm-up batch of that size;
model load and checkpoint writing are excluded. RTFx = audio seconds / wall seconds.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_AUDIO_DIRS = (REPO / ".whl" / "librivox", Path("/usr/share/pocketsphinx/test/data/librivox"))
# Clips per batch size: enough batches that one timed run lasts seconds, few enough to fit the lease.
DEFAULT_CLIPS = {1: 10, 32: 160, 192: 576}


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def gpu_info(device) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "nemo", "lightning", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # report, don't fail
            info[name] = f"unavailable ({type(e).__name__})"
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30)  # fmt: skip
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"unavailable ({e})"
    else:
        info["gpu"] = "none (cpu run)"
    return info


def load_clips(audio_dir: Path | None):
    from canary_trt.audio import load_audio

    dirs = [audio_dir] if audio_dir else [d for d in DEFAULT_AUDIO_DIRS if d.is_dir()]
    for d in dirs:
        paths = sorted(d.glob("*.wav"))
        if paths:
            return [(p.stem, load_audio(p)) for p in paths]
    raise FileNotFoundError(f"no .wav clips in {', '.join(map(str, dirs)) or DEFAULT_AUDIO_DIRS}")


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_batch_size(reference, clips, batch, n_clips, new_tokens, device) -> dict:
    import torch

    from canary_trt.transcribe import transcribe

    waveforms = [clips[i % len(clips)][1] for i in range(n_clips)]
    names = [clips[i % len(clips)][0] for i in range(n_clips)]
    # Warm-up, untimed: one batch of this size (kernels, cuBLAS handles, allocator growth), and at least
    # one pass over the distinct clips so that batch 1 has seen every input length once.
    transcribe(reference, waveforms[: max(batch, len(clips))], batch_size=batch, max_new_tokens=new_tokens,
               force_length=True)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    results = transcribe(reference, waveforms, batch_size=batch, max_new_tokens=new_tokens, force_length=True)
    synchronize(device)
    wall = time.perf_counter() - start
    audio = sum(r.audio_seconds for r in results)
    lengths = sorted({len(r.token_ids) for r in results})
    row = {
        "batch": batch, "clips": n_clips, "audio_s": round(audio, 2), "wall_s": round(wall, 3),
        "rtfx": round(audio / wall, 1), "tokens_per_s": round(n_clips * new_tokens / wall, 1),
        "new_tokens_per_clip": lengths,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2) if device.type == "cuda" else None,
        "first_ids": {name: r.token_ids for name, r in zip(names[: len(clips)], results[: len(clips)])},
    }  # fmt: skip
    if lengths != [new_tokens]:
        log(f"WARNING: batch {batch}: generated lengths {lengths}, expected exactly {new_tokens}")
    return row


def table(rows: list[dict]) -> str:
    lines = ["| batch | clips | audio s | wall s | RTFx | new tokens/s | peak GPU mem (alloc / reserved GiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        mem = "n/a" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f} / {r['peak_gpu_reserved_gib']:.2f}"
        lines.append(f"| {r['batch']} | {r['clips']} | {r['audio_s']:.2f} | {r['wall_s']:.2f} | {r['rtfx']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {mem} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch-sizes", default="1,32,192")
    parser.add_argument("--clips", default=None, help="clips per batch size, e.g. 1:10,32:160,192:576 (default)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per clip, forced (default 32)")
    parser.add_argument("--audio-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    n_clips = dict(DEFAULT_CLIPS)
    if args.clips:
        n_clips.update({int(b): int(n) for b, n in (item.split(":") for item in args.clips.split(","))})

    info = gpu_info(device)
    log("machine: " + json.dumps(info))
    clips = load_clips(args.audio_dir)
    log(f"{len(clips)} clips, {sum(len(w) for _, w in clips) / 16000:.2f} s: "
        + ", ".join(f"{n} {len(w) / 16000:.2f}s" for n, w in clips))  # fmt: skip

    from canary_trt.checkpoint import Checkpoint
    from canary_trt.reference import Reference

    start = time.perf_counter()
    reference = Reference(Checkpoint.open(args.checkpoint), dtype=args.dtype, device=args.device)
    synchronize(device)
    loaded = time.perf_counter()
    attn = getattr(reference.llm.config, "_attn_implementation", "?")
    log(f"reference built (on the CPU) and moved to {device} in {loaded - start:.1f} s; "
        f"dtype {args.dtype}, LLM attention '{attn}'")
    if device.type == "cuda":
        log(f"GPU memory after load: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB")

    rows = []
    for batch in batch_sizes:
        n = n_clips.get(batch, max(batch, 2 * batch))
        log(f"batch {batch}: warm-up (untimed), then {n} clips ({-(-n // batch)} batches), {args.new_tokens} tokens each")
        try:
            row = run_batch_size(reference, clips, batch, n, args.new_tokens, device)
        except torch.cuda.OutOfMemoryError as e:
            log(f"batch {batch}: out of GPU memory: {str(e).splitlines()[0]}")
            torch.cuda.empty_cache()
            continue
        rows.append(row)
        log(f"batch {batch}: {row['wall_s']:.2f} s for {row['audio_s']:.1f} s audio -> RTFx {row['rtfx']:.1f}, "
            f"peak {row['peak_gpu_gib']} GiB")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # Same clips at different batch sizes: do the greedy tokens agree (bf16 batching may flip argmaxes)?
    if len(rows) > 1:
        base = rows[0]["first_ids"]
        for row in rows[1:]:
            same = sum(base[k] == v for k, v in row["first_ids"].items())
            prefix = [next((i for i, (a, b) in enumerate(zip(base[k], v)) if a != b), min(len(base[k]), len(v)))
                      for k, v in row["first_ids"].items()]  # fmt: skip
            row["agreement_with_first_batch_size"] = {"identical_clips": same, "common_prefix_tokens": prefix}
            log(f"token ids of the {len(base)} distinct clips, batch {rows[0]['batch']} vs batch {row['batch']}: "
                f"{same}/{len(base)} identical; tokens agreeing before the first difference: {prefix}")

    print()
    print(f"GPU: {info.get('gpu')} | torch {info['torch']} (CUDA {info['cuda']}) | transformers {info['transformers']} "
          f"| nemo {info['nemo']} | {args.dtype} | {args.new_tokens} new tokens per clip (forced) | "
          f"warm-up and model load excluded")  # fmt: skip
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"date": time.strftime("%Y-%m-%d"), "machine": info, "dtype": args.dtype, "new_tokens": args.new_tokens,
               "model_load_s": round(loaded - start, 1), "attention": attn,
               "rows": [{k: v for k, v in r.items() if k != "first_ids"} for r in rows]}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0 if len(rows) == len(batch_sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
