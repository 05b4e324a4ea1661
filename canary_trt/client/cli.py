"""`canary-trt-client`: transcribe with, and benchmark, a canary-trt Triton server over gRPC. No torch needed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..contract import MAX_AUDIO_SECONDS, SAMPLE_RATE
from ..errors import CanaryError, InvalidInput

FORMATS = ("text", "json", "srt", "vtt")

PROG = "canary-trt-client"
EXIT_CODES = "exit status: 0 every clip transcribed; 1 some clips failed (each one named); 2 a usage or setup error"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, epilog=EXIT_CODES)
    commands = parser.add_subparsers(dest="command", required=True)

    tr = commands.add_parser("transcribe", help="transcribe audio files", epilog=EXIT_CODES)
    tr.add_argument("audio", nargs="+", type=Path,
                    help="wav/flac/ogg files, or folders: every such file inside, sorted")  # fmt: skip
    _add_server_options(tr)
    tr.add_argument("--concurrency", type=_positive, default=8, help="requests in flight at once (default 8)")
    tr.add_argument("--format", choices=FORMATS, default="text",
                    help="text: one line per input (default); json: a JSON list, one object per input, with its "
                    "segments; srt, vtt: subtitles, one cue per segment, on stdout for one input, else one file "
                    "per input in --out-dir")  # fmt: skip
    tr.add_argument("--json", dest="format", action="store_const", const="json", help="the same as --format json")
    tr.add_argument("--out-dir", type=Path, help="srt/vtt: write INPUT_STEM.srt / .vtt here, one per input")
    tr.add_argument("--long-form", action=argparse.BooleanOptionalAction, default=None,
                    help="send every input to canary_qwen_long (--long-form) or to canary_qwen (--no-long-form); "
                    f"default: inputs over {MAX_AUDIO_SECONDS:g} s go to canary_qwen_long")  # fmt: skip
    tr.set_defaults(run=_transcribe)

    st = commands.add_parser("stream", help="live transcription of a file, sent in chunks (as a microphone would with "
                             "--realtime); prints interim and final segments as they come",
                             epilog="exit status: 0 streamed to the end; 2 a usage or setup error, or the stream "
                             "refused")  # fmt: skip
    st.add_argument("audio", type=Path, help="a wav/flac/ogg/mp3 file (any rate: resampled to 16 kHz)")
    st.add_argument("--url", action="append", help="Triton gRPC endpoint(s) (default 127.0.0.1:8001)")
    st.add_argument("--realtime", action="store_true", help="pace the chunks at 1x, as a microphone gives them "
                    "(default: as fast as the server takes them)")  # fmt: skip
    st.add_argument("--chunk-ms", type=_positive, default=100, help="audio per request, ms (default 100)")
    st.add_argument("--interim-ms", type=_positive, help="interim results: re-decode the open utterance every N ms of "
                    "new audio in it (at least 500; default: finals only)")  # fmt: skip
    st.add_argument("--prompt", help='user instruction (default: the server\'s, "Transcribe the following:")')
    st.add_argument("--timeout", type=_seconds, help="seconds for the whole stream (default: none)")
    st.add_argument("--json", action="store_true", help="one JSON object per segment, a line each, interims too")
    st.set_defaults(run=_stream, attempts=1, backoff=0.5)

    ask = commands.add_parser("ask", help="LLM mode: ask about a recording (or ask the base LLM alone)",
                              epilog="exit status: 0 answered; 2 a usage or setup error, or the request refused")  # fmt: skip
    ask.add_argument("question", help="what to ask, e.g. 'Summarize this recording.'")
    ask.add_argument("--audio", type=Path, help="the recording (any length; wav/flac/ogg/mp3); none: text only")
    ask.add_argument("--url", action="append", help="Triton gRPC endpoint(s) (default 127.0.0.1:8001)")
    ask.add_argument("--max-new-tokens", type=_positive, help="answer tokens at most (default: the server's)")
    ask.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                     help="Qwen3's thinking (default: on, the server's); --no-thinking skips it")  # fmt: skip
    ask.add_argument("--timeout", type=_seconds, help="seconds for the whole answer (default: none)")
    ask.add_argument("--json", action="store_true", help="print the whole result as JSON, not the streamed text")
    ask.set_defaults(run=_ask, attempts=5, backoff=0.5)

    from .bench import DEFAULT_WARMUP
    from .bench_datasets import DEFAULT_WINDOW
    from .leaderboard import HUB_DATASET, PRESET

    be = commands.add_parser("bench", help="measure WER, RTFx, latency and Triton statistics on a data set",
                             epilog=EXIT_CODES)  # fmt: skip
    data = be.add_mutually_exclusive_group(required=True)
    data.add_argument("--manifest", type=Path, help="NeMo JSONL manifest (audio_filepath, text, duration)")
    data.add_argument("--audio-dir", type=Path, help="folder of audio files, each with its transcript in x.txt")
    data.add_argument("--dataset", action="append",
                      help="HF_ID[:CONFIG[:SPLIT]] (split default test), or a local folder `datasets` reads "
                      "(parquet, or save_to_disk), streamed; repeat for several sets, each reported and resumed on "
                      f"its own; '{PRESET}': the Open ASR Leaderboard's eight English test sets")  # fmt: skip
    be.add_argument("--leaderboard-data", metavar="ROOT",
                    help=f"with --dataset {PRESET}: read the sets from this copy of {HUB_DATASET} (same configs "
                    "and splits) instead of the Hub")  # fmt: skip
    be.add_argument("--max-samples", type=_positive, help="--dataset: the first N rows of each set only (quick runs)")
    be.add_argument("--window", type=_positive,
                    help=f"--dataset: decoded clips read ahead of the sends, at most (default {DEFAULT_WINDOW})")
    be.add_argument("--build", type=Path,
                    help="the server's build folder: its export.json names the target and precision in the report")
    _add_server_options(be)
    be.add_argument("--concurrency", type=_levels, default=[1, 8, 32], help="comma-separated levels (default 1,8,32)")
    be.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                    help=f"untimed requests before each level (default {DEFAULT_WARMUP})")  # fmt: skip
    be.add_argument("--out", type=Path, default=Path("bench-report"),
                    help="report folder (default ./bench-report); finished requests are appended to its "
                    "partial.jsonl as they come, and a rerun with the same folder and data set resumes")  # fmt: skip
    be.add_argument("--fresh", action="store_true", help="discard partial results left in --out; start over")
    be.set_defaults(run=_bench)

    lv = commands.add_parser("manifest-librivox", help="write a NeMo manifest of Debian's LibriVox test clips")
    lv.add_argument("--out", required=True, type=Path, help="manifest file to write")
    lv.add_argument("--dir", type=Path, help="folder with the clips and their `transcription` file "
                    "(default: pocketsphinx-testdata's)")  # fmt: skip
    lv.set_defaults(run=_manifest_librivox)

    args = parser.parse_args(argv)
    from tritonclient.utils import InferenceServerException

    try:
        return args.run(args) or 0
    except (CanaryError, InferenceServerException) as e:  # clear errors (incl. no server): no traceback; a bug keeps its own
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", action="append",
                        help="Triton's gRPC endpoint host:port (default 127.0.0.1:8001); several replicas: repeat "
                        "--url or separate with commas; a name with several addresses (e.g. a Kubernetes headless "
                        "Service) means each address. Requests go to the least busy endpoint; one that stops "
                        "answering is skipped and tried again later")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=_positive, help="generated tokens at most (default: the server's, 128)")
    parser.add_argument("--prompt", help='user instruction (default: the server\'s, "Transcribe the following:")')
    parser.add_argument("--attempts", type=_positive, default=5,
                        help="sends per request, over all endpoints, while servers are unavailable or "
                        "overloaded (default 5)")  # fmt: skip
    parser.add_argument("--timeout", type=_seconds,
                        help="seconds a request may take at the server, else it fails as a timeout, not retried "
                        "(default: no limit)")  # fmt: skip
    parser.add_argument("--backoff", type=_seconds, default=0.5,
                        help="first pause between tries, doubling each time, at most 8 s (default 0.5); also how "
                        "long an endpoint that stops answering is first left out")  # fmt: skip


def _urls(args) -> list[str]:
    from .api import DEFAULT_URL
    from .endpoints import split_urls

    return split_urls(args.url or [DEFAULT_URL])


def _retry(args):
    from .retry import RetryPolicy

    return RetryPolicy(attempts=args.attempts, initial=args.backoff)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _levels(text: str) -> list[int]:
    return [_positive(part) for part in text.split(",")]


def _transcribe(args) -> int:
    from .api import AsyncTranscriptionClient
    from .manifest import find_audio

    paths = [file for path in args.audio for file in (find_audio(path) if path.is_dir() else [path])]
    if not paths:
        raise InvalidInput(f"no wav/flac/ogg files in {' '.join(map(str, args.audio))}")
    outputs = _subtitle_files(args, paths)

    async def run():
        async with AsyncTranscriptionClient(_urls(args), concurrency=args.concurrency, timeout=args.timeout,
                                            retry=_retry(args)) as client:  # fmt: skip
            await _check_ready(client)
            return await client.transcribe_many(paths, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                                                long_form=args.long_form, return_exceptions=True)  # fmt: skip

    start = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - start
    rows = []
    for path, result in zip(paths, results):
        if isinstance(result, BaseException):
            reason = str(result) or type(result).__name__
            named = reason if str(path) in reason else f"{path}: {reason}"  # audio errors name their file already
            print(f"{PROG} transcribe: failed: {named}", file=sys.stderr)
            rows.append({"audio": str(path), "error": reason})
        else:
            rows.append({"audio": str(path), "text": result.text, "token_ids": result.token_ids,
                         "audio_seconds": round(result.audio_seconds, 3),
                         "latency_seconds": round(result.latency_seconds, 4),
                         "segments": [asdict(segment) for segment in result.segments]})  # fmt: skip
    done = [row for row in rows if "error" not in row]
    audio_seconds = sum(row["audio_seconds"] for row in done)
    print(f"{len(done)} of {len(rows)} clips transcribed, {audio_seconds:.2f} s of audio in {wall:.2f} s "
          f"(RTFx {audio_seconds / wall:.2f}, concurrency {args.concurrency})", file=sys.stderr)  # fmt: skip
    if args.format == "json":
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif args.format in ("srt", "vtt"):
        from .subtitles import render

        for path, result in zip(paths, results):
            if isinstance(result, BaseException):
                continue
            text = render(result.segments, args.format)
            if outputs is None:
                sys.stdout.write(text)
            else:
                outputs[path].write_text(text, encoding="utf-8")
                print(f"wrote {outputs[path]}", file=sys.stderr)
    else:
        for row in done:
            print(f"{row['audio']}\t{' '.join(row['text'].split())}")  # one line per file
    return 0 if len(done) == len(rows) else 1


def _ask(args) -> int:
    """Streams the reasoning (to stderr, when there is one) and the answer (to stdout) as they come."""
    from .api import Answer, TranscriptionClient

    with TranscriptionClient(_urls(args), timeout=args.timeout, retry=_retry(args)) as client:
        pieces = client.ask_stream(args.question, args.audio, enable_thinking=args.thinking,
                                   max_new_tokens=args.max_new_tokens, stream=not args.json)  # fmt: skip
        for piece in pieces:
            if isinstance(piece, Answer):
                break
            (sys.stderr if piece.kind == "reasoning" else sys.stdout).write(piece.text)
            (sys.stderr if piece.kind == "reasoning" else sys.stdout).flush()
    if args.json:
        print(json.dumps({k: v for k, v in asdict(piece).items() if k != "deltas"}, ensure_ascii=False, indent=2))
    else:
        print()
        print(f"[{piece.finish_reason}; {len(piece.token_ids)} tokens, {piece.prompt_tokens} in the prompt; first "
              f"text after {_ms(piece.first_delta_seconds)}, all after {_ms(piece.latency_seconds)}]", file=sys.stderr)
    return 0


def _stream(args) -> int:
    """Finals as `[start - end] text`; interims marked, overwritten in place on a terminal."""
    from ..audio import load_audio
    from .api import TranscriptionClient
    from .streaming import chunked, paced

    samples = load_audio(args.audio)
    chunks = chunked(samples, args.chunk_ms)
    overwrite = sys.stdout.isatty() and not args.json
    finals, start = 0, time.perf_counter()
    with TranscriptionClient(_urls(args), timeout=args.timeout, retry=_retry(args)) as client:
        for segment in client.stream(paced(chunks) if args.realtime else chunks, args.interim_ms, args.prompt):
            finals += segment.is_final
            if args.json:
                print(json.dumps(asdict(segment), ensure_ascii=False), flush=True)
                continue
            text = " ".join(segment.text.split())  # one line per segment
            line = f"[{segment.start_s:7.2f} - {segment.end_s:7.2f}] {'' if segment.is_final else '~ '}{text}"
            if overwrite:  # an interim is replaced by the next line; a final stays
                sys.stdout.write(f"\r\033[K{line}" + ("\n" if segment.is_final else ""))
                sys.stdout.flush()
            else:
                print(line, flush=True)
    wall = time.perf_counter() - start
    print(f"[{finals} final segments, {samples.size / SAMPLE_RATE:.2f} s of audio in {wall:.2f} s]", file=sys.stderr)
    return 0


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _subtitle_files(args, paths: list[Path]) -> dict[Path, Path] | None:
    """srt/vtt: each input's file in --out-dir, or None for stdout (one input, no --out-dir)."""
    if args.format not in ("srt", "vtt"):
        if args.out_dir is not None:
            raise InvalidInput("--out-dir is for --format srt or vtt")
        return None
    if args.out_dir is None:
        if len(paths) > 1:
            raise InvalidInput(f"--format {args.format} with {len(paths)} inputs: give --out-dir (one file per input)")
        return None
    files = {path: args.out_dir / f"{path.stem}.{args.format}" for path in paths}
    clash = len(set(files.values())) < len(files)
    if clash:
        raise InvalidInput(f"inputs with the same name would share a file in {args.out_dir}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    return files


async def _check_ready(client) -> None:
    """One clear error, not one per file, when no endpoint has the model ready; an endpoint that is not
    ready is named and left to the client (it skips the unreachable ones)."""
    from tritonclient.utils import InferenceServerException

    problems = []
    for endpoint in client.endpoints:
        try:
            if not await endpoint.triton.is_model_ready(client.model, client_timeout=client.timeout):
                problems.append(f"the Triton server at {endpoint.url} has no ready model {client.model!r}")
        except InferenceServerException as e:
            problems.append(f"{endpoint.url}: {e}")
    if len(problems) == len(client.endpoints):
        raise InvalidInput("; ".join(problems))
    for problem in problems:
        print(f"{PROG}: warning: {problem}", file=sys.stderr)


def _bench(args) -> int:
    from .bench import run_benchmark
    from .manifest import read_audio_dir, read_manifest
    from .report import summary_rows, write_report

    if args.dataset:
        return _bench_datasets(args)
    if args.max_samples or args.leaderboard_data or args.window or args.build:
        raise InvalidInput("--max-samples, --leaderboard-data, --window and --build are for --dataset")
    utterances = read_manifest(args.manifest) if args.manifest else read_audio_dir(args.audio_dir)
    source = str(args.manifest or args.audio_dir)
    report = run_benchmark(_urls(args), utterances, args.concurrency, args.warmup, args.max_new_tokens, source,
                           out=args.out, fresh=args.fresh, retry=_retry(args), timeout=args.timeout,
                           prompt=args.prompt)  # fmt: skip
    written = write_report(report, args.out)
    rows = summary_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    print("wrote " + ", ".join(str(path) for path in written))
    for p in report["passes"]:
        answered = ", ".join(f"{url} {n}" for url, n in p["requests_by_endpoint"].items())
        print(f"concurrency {p['concurrency']}: {len(p['utterances'])} utterances, {p['done']} done "
              f"({p['resumed']} resumed, {p['sent']} sent), {p['failed']} failed"
              + (f"; answered by {answered}" if len(p["requests_by_endpoint"]) > 1 else ""))  # fmt: skip
    if any(p["failed"] for p in report["passes"]):
        from .resume import PARTIAL_NAME

        print(f"some utterances failed: run again with --out {args.out} to resume (done ones are kept in "
              f"{args.out / PARTIAL_NAME})", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _dataset_runs(args) -> list:
    """--dataset values as DatasetRuns; the preset stands for its eight sets."""
    from .bench_datasets import DatasetRun
    from .datasets_source import DatasetSpec
    from .leaderboard import HUB_DATASET, PRESET, preset_specs

    if args.leaderboard_data and PRESET not in args.dataset:
        raise InvalidInput(f"--leaderboard-data is for --dataset {PRESET}")
    runs = []
    for text in args.dataset:
        if text == PRESET:
            runs += [DatasetRun(DatasetSpec.parse(spec), s.name, s.published_wer)
                     for spec, s in preset_specs(args.leaderboard_data or HUB_DATASET)]  # fmt: skip
        else:
            spec = DatasetSpec.parse(text)
            runs.append(DatasetRun(spec, spec.label))
    return runs


def _bench_datasets(args) -> int:
    from ..export_info import read_export_info
    from .bench_datasets import DEFAULT_WINDOW, run_dataset_benchmark
    from .leaderboard import PRESET
    from .report import sets_rows, write_summary

    runs = _dataset_runs(args)
    build = read_export_info(args.build) if args.build else None
    summary = run_dataset_benchmark(_urls(args), runs, args.concurrency, args.warmup, args.out,
                                    max_new_tokens=args.max_new_tokens, fresh=args.fresh, retry=_retry(args),
                                    timeout=args.timeout, prompt=args.prompt, max_samples=args.max_samples,
                                    window=args.window or DEFAULT_WINDOW, build=build,
                                    preset=PRESET if PRESET in args.dataset else None)  # fmt: skip
    written = write_summary(summary, args.out)
    for level in summary["levels"]:
        print(f"concurrency {level['concurrency']}:")
        rows = sets_rows(level, summary["published"])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    print("wrote " + ", ".join(str(path) for path in written) + f" (each set's report in its folder under {args.out})")
    failed = sum(r["failed"] for level in summary["levels"] for r in level["sets"])
    if failed:
        print(f"{failed} requests failed: run again with --out {args.out} to resume (each set keeps its done ones in "
              "its folder's partial.jsonl)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _manifest_librivox(args) -> None:
    from ..contract import LIBRIVOX_DIR
    from .manifest import librivox_utterances, write_manifest

    utterances = librivox_utterances(args.dir or LIBRIVOX_DIR)
    print(f"wrote {len(utterances)} utterances to {write_manifest(args.out, utterances)}")


if __name__ == "__main__":
    sys.exit(main())
