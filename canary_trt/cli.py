"""`canary-trt` subcommands. Heavy libraries are imported inside each command so --help stays instant."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="canary-trt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-checkpoint", help="write a random-weight checkpoint in the real layout")
    make.add_argument("--size", choices=("tiny", "full"), default="tiny")
    make.add_argument("--out", required=True, type=Path)
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(run=_make_checkpoint)

    tr = commands.add_parser("transcribe", help="transcribe audio files")
    tr.add_argument("audio", nargs="+", type=Path, help="wav/flac/ogg files, any sample rate and channel count")
    tr.add_argument("--checkpoint", required=True, type=Path, help="directory with config.json + model.safetensors")
    tr.add_argument("--backend", choices=("torch",), default="torch")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--max-new-tokens", type=int, default=128)
    tr.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="torch backend precision")
    tr.add_argument("--prompt", default=None, help='user instruction (default "Transcribe the following:")')
    tr.add_argument("--json", action="store_true", help="print a JSON list, one object per input")
    tr.set_defaults(run=_transcribe)

    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError) as e:  # our clear errors: no traceback for the user
        print(f"canary-trt {args.command}: error: {e}", file=sys.stderr)
        return 2


def _make_checkpoint(args) -> None:
    from .random_checkpoint import write_random_checkpoint

    start = time.perf_counter()
    ckpt = write_random_checkpoint(args.out, args.size, args.seed)
    size_gb = ckpt.weights_file.stat().st_size / 1e9
    print(f"wrote random {args.size} checkpoint to {ckpt.path} ({size_gb:.2f} GB, {time.perf_counter() - start:.1f} s)")
    print("random weights: transcripts from it are meaningless text, but every backend must agree token by token")


def _transcribe(args) -> None:
    from .audio import load_audio
    from .checkpoint import Checkpoint
    from .tokenizer import DEFAULT_INSTRUCTION

    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError("--batch-size and --max-new-tokens must be at least 1")
    checkpoint = Checkpoint.open(args.checkpoint)
    waveforms = [load_audio(path) for path in args.audio]
    from .reference import Reference

    start = time.perf_counter()
    model = Reference(checkpoint, dtype=args.dtype)
    loaded = time.perf_counter()
    results = model.transcribe(
        waveforms, args.batch_size, args.max_new_tokens, args.prompt or DEFAULT_INSTRUCTION
    )
    done = time.perf_counter()
    rows = [
        {"audio": str(path), "text": r.text, "token_ids": r.token_ids, "audio_seconds": round(r.audio_seconds, 3)}
        for path, r in zip(args.audio, results)
    ]
    audio_seconds = sum(r.audio_seconds for r in results)
    print(
        f"{len(rows)} clips, {audio_seconds:.2f} s of audio | model load {loaded - start:.1f} s | "
        f"transcription {done - loaded:.2f} s | RTFx {audio_seconds / (done - loaded):.2f} ({args.backend}, {args.dtype}, "
        f"batch {args.batch_size})",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        for row in rows:
            print(f"{row['audio']}\t{' '.join(row['text'].split())}")  # one line per file


if __name__ == "__main__":
    sys.exit(main())
