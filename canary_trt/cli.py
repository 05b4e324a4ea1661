"""`canary-trt` subcommands. Heavy libraries are imported inside each command so --help stays instant."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .contract import MAX_LONG_AUDIO_SECONDS, MAX_NEW_TOKENS
from .errors import CanaryError, InvalidInput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="canary-trt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-checkpoint", help="write a random-weight checkpoint in the real layout")
    make.add_argument("--size", choices=("tiny", "full"), default="tiny")
    make.add_argument("--out", required=True, type=Path)
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(run=_make_checkpoint)

    ex = commands.add_parser("export", help="export a checkpoint: ONNX (cpu) or TensorRT + TensorRT-LLM (gpu)")
    ex.add_argument("--checkpoint", required=True, type=Path, help="directory with config.json + model.safetensors")
    ex.add_argument("--out", required=True, type=Path, help="build directory")
    ex.add_argument("--target", choices=("cpu", "gpu"), default="cpu")
    ex.add_argument("--preset", help="GPU shapes: rtx5090, rtx-pro-6000, l40s, a100, h100 (default h100)")
    ex.add_argument("--precision", help="cpu: fp32 (default, exact) | int8 (8-bit encoder and decoder weights) | "
                    "int4 (4-bit decoder weights, int8 encoder); gpu: fp16 (default) | bf16 (encoder) | fp8 | int8 "
                    "(LLM weights)")  # fmt: skip
    ex.add_argument("--stage", choices=("all", "prepare", "engines"), default="all",
                    help="gpu: prepare = the PyTorch/NeMo steps (encoder ONNX, merged HF checkpoint, configs) on any "
                    "machine with canary-trt[full]; engines = the TensorRT/TensorRT-LLM steps on that folder, in the "
                    "pinned container; all (default) = both")  # fmt: skip
    ex.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                    help=f"generated tokens one request may ask for (default {MAX_NEW_TOKENS}); the GPU engine's max_seq_len "
                    "follows, and both flavours refuse requests over it")  # fmt: skip
    ex.add_argument("--calib-dataset", type=Path,
                    help="gpu --precision fp8: a local text data set for the LLM's FP8 calibration (a directory "
                    "`datasets.load_dataset` reads, with a train split and a `text` column); required for fp8")  # fmt: skip
    ex.add_argument("--llm-mode", action="store_true",
                    help="also export the base LLM (LoRA off) for the model card's LLM mode: llm_decoder "
                         "(CPU fp32 full size: ~6.9 GB more; docs/SERVING.md#llm-mode-build)")  # fmt: skip
    ex.add_argument("--dry-run", action="store_true", help="print every step, command and shape; run nothing")
    ex.set_defaults(run=_export)

    demo = commands.add_parser("demo", help="the main job: export, serve, transcribe LibriVox speech over gRPC")
    demo.add_argument("--checkpoint", type=Path, help="a real checkpoint (default: a random tiny one)")
    demo.add_argument("--work", type=Path, default=Path("build/demo"), help="where checkpoints and builds go")
    demo.add_argument("--llm-mode", action=argparse.BooleanOptionalAction, default=None,
                      help="also export and show LLM mode (default: on with the random checkpoint, off with a real one)")
    demo.set_defaults(run=_demo)

    tr = commands.add_parser("transcribe", help="transcribe audio files")
    tr.add_argument("audio", nargs="+", type=Path, help="wav/flac/ogg files, any sample rate and channel count")
    tr.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                    help="torch: the PyTorch reference (--checkpoint); onnx: an exported CPU build (--build)")  # fmt: skip
    tr.add_argument("--checkpoint", type=Path, help="directory with config.json + model.safetensors")
    tr.add_argument("--build", type=Path, help="directory written by `canary-trt export --target cpu`")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    tr.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="torch backend precision")
    tr.add_argument("--device", default="cpu", help="torch backend device, e.g. cuda (default cpu)")
    tr.add_argument("--threads", type=int, help="onnx backend: ONNX Runtime threads (default: one per core)")
    tr.add_argument("--prompt", default=None, help='user instruction (default "Transcribe the following:")')
    tr.add_argument("--json", action="store_true", help="print a JSON list, one object per input")
    tr.set_defaults(run=_transcribe)

    sv = commands.add_parser("serve", help="run the tritonserver bundled in nvidia-pytriton (CPU, python backend)")
    sv.add_argument("--model-repository", required=True, type=Path, help="Triton model repository of python models")
    sv.add_argument("--host", default="127.0.0.1", help="address of all three endpoints (default 127.0.0.1)")
    sv.add_argument("--grpc-port", type=int, default=8001, help="default 8001; 0: any free port (all three ports)")
    sv.add_argument("--http-port", type=int, default=8000, help="default 8000")
    sv.add_argument("--metrics-port", type=int, default=8002, help="default 8002")
    sv.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    sv.add_argument("--log-file", type=Path, help="keep the server's log here (default: a temporary file)")
    sv.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for every model to load")
    sv.set_defaults(run=_serve)

    api = commands.add_parser("api", help="an OpenAI-compatible HTTP front (/v1/audio/transcriptions) for a Triton server")
    api.add_argument("--triton-url", default="127.0.0.1:8001",
                     help="Triton's gRPC endpoint (default 127.0.0.1:8001); several replicas: comma-separated, or a "
                     "name with several addresses (requests spread as canary-trt-client spreads them)")  # fmt: skip
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8080, help="default 8080")
    api.add_argument("--model-name", default="canary-qwen-2.5b", help="the `model` id served (default canary-qwen-2.5b)")
    api.add_argument("--model-alias", action="append", default=[], metavar="NAME",
                     help="another accepted `model` value, e.g. whisper-1 (repeatable)")  # fmt: skip
    api.add_argument("--max-in-flight", type=int, default=16, help="requests sent to Triton at once (default 16)")
    api.add_argument("--max-queue", type=int, default=64, help="more requests waiting; beyond them 429 (default 64)")
    api.add_argument("--max-file-mb", type=float, default=25.0, help="upload limit in MiB, else 413 (default 25)")
    api.add_argument("--max-audio-seconds", type=float, default=MAX_LONG_AUDIO_SECONDS,
                     help="longer uploads (by their header) are refused with 400 before decoding (default "
                     f"{MAX_LONG_AUDIO_SECONDS}, the server's max_long_audio_seconds)")  # fmt: skip
    api.add_argument("--max-new-tokens", type=int,
                     help="generated tokens at most, for audio up to 40 s (default: the server's, 128); longer audio: "
                     "the long-form model sets each segment's budget")  # fmt: skip
    api.add_argument("--timeout", type=float, default=300.0, help="seconds per request at Triton, else 504 (default 300)")
    api.add_argument("--prompt-as-instruction", action="store_true",
                     help="use OpenAI's `prompt` as the model's instruction (default: accepted and ignored)")  # fmt: skip
    api.add_argument("--api-key-env", metavar="VAR",
                     help="require `Authorization: Bearer $VAR` on /v1 (the key is read from this environment variable)")  # fmt: skip
    api.set_defaults(run=_api)

    from .gpu_check.cli import add_parser as add_gpu_check

    add_gpu_check(commands)  # `gpu-check prepare|run`: canary_trt/gpu_check/

    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except CanaryError as e:  # our clear errors: no traceback for the user; a bug keeps its traceback
        print(f"canary-trt {args.command}: error: {e}", file=sys.stderr)
        return 2


def _make_checkpoint(args) -> None:
    from .random_checkpoint import write_random_checkpoint

    start = time.perf_counter()
    ckpt = write_random_checkpoint(args.out, args.size, args.seed)
    size_gb = ckpt.weights_file.stat().st_size / 1e9
    print(f"wrote random {args.size} checkpoint to {ckpt.path} ({size_gb:.2f} GB, {time.perf_counter() - start:.1f} s)")
    print("random weights: transcripts from it are meaningless text, but every backend must agree token by token")


def _demo(args) -> None:
    from .demo import run

    run(args.checkpoint, args.work, args.llm_mode)


def _export(args) -> None:
    from .export.build import export

    export(args.checkpoint, args.out, args.target, args.precision, args.preset, args.dry_run, stage=args.stage,
           max_new_tokens=args.max_new_tokens, calib_dataset=args.calib_dataset, llm_mode=args.llm_mode)
    if not args.dry_run:
        print(f"build written to {args.out.resolve()}")


def _open_backend(args):
    if args.backend == "torch":
        from .checkpoint import Checkpoint
        from .reference import Reference

        return Reference(Checkpoint.open(args.checkpoint), dtype=args.dtype, device=args.device)
    from .onnx_pipeline import OnnxPipeline

    return OnnxPipeline(args.build, threads=args.threads)


def _transcribe(args) -> None:
    from .audio import load_audio
    from .tokenizer import DEFAULT_INSTRUCTION
    from .transcribe import transcribe

    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise InvalidInput("--batch-size and --max-new-tokens must be at least 1")
    if args.backend == "torch" and not args.checkpoint:
        raise InvalidInput("--backend torch needs --checkpoint DIR")
    if args.backend == "onnx" and not args.build:
        raise InvalidInput("--backend onnx needs --build DIR (written by `canary-trt export --target cpu`)")
    waveforms = [load_audio(path) for path in args.audio]
    start = time.perf_counter()
    backend = _open_backend(args)
    loaded = time.perf_counter()
    results = transcribe(backend, waveforms, args.batch_size, args.max_new_tokens, args.prompt or DEFAULT_INSTRUCTION)
    done = time.perf_counter()
    rows = [
        {"audio": str(path), "text": r.text, "token_ids": r.token_ids, "audio_seconds": round(r.audio_seconds, 3)}
        for path, r in zip(args.audio, results)
    ]
    audio_seconds = sum(r.audio_seconds for r in results)
    print(
        f"{len(rows)} clips, {audio_seconds:.2f} s of audio | model load {loaded - start:.1f} s | "
        f"transcription {done - loaded:.2f} s | RTFx {audio_seconds / (done - loaded):.2f} ({args.backend} backend, "
        f"batch {args.batch_size})",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        for row in rows:
            print(f"{row['audio']}\t{' '.join(row['text'].split())}")  # one line per file


def _api(args) -> None:
    import os

    from .openai_api import Settings, serve

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise InvalidInput(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InvalidInput("--max-new-tokens must be at least 1")
    settings = Settings(
        args.triton_url, args.model_name, tuple(args.model_alias), args.max_in_flight, args.max_queue,
        int(args.max_file_mb * 2**20), args.max_new_tokens, args.timeout, args.prompt_as_instruction, api_key,
        max_audio_seconds=args.max_audio_seconds,
    )  # fmt: skip
    serve(settings, args.host, args.port)


def _serve(args) -> int:
    import signal

    from .server import TritonServer, TritonServerError

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # a service manager's stop is a Ctrl-C
    # Also SIGINT itself: a shell without job control starts background commands with SIGINT ignored, and
    # Python then keeps it ignored: `kill -INT` would do nothing.
    signal.signal(signal.SIGINT, interrupt)
    server = TritonServer(
        args.model_repository, args.host, args.grpc_port, args.http_port, args.metrics_port,
        log_file=args.log_file, log_verbose=args.log_verbose,
    )  # fmt: skip
    try:
        server.start(timeout=args.ready_timeout)
        print(f"tritonserver ready (pid {server.pid}, log {server.log_path})", flush=True)
        print(f"grpc    {server.grpc_url}\nhttp    {server.http_url}\nmetrics {server.metrics_url}", flush=True)
        server.wait()
        server.check()  # it died: raises with its exit status and its own error lines
    except KeyboardInterrupt:
        return 0
    except TritonServerError as e:
        error = e
    finally:
        # A second Ctrl-C must not cut the clean-up short: stop() is bounded (SIGKILL after its timeout).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
    print(f"canary-trt serve: error: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
