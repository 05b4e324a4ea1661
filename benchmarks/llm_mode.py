"""LLM mode, served: how long an answer about a 5-minute recording takes (first text, all of it).

    .venv/bin/canary-trt export --checkpoint build/bench-full/checkpoint --out build/bench-full/build-cpu-llm \\
        --precision int8 --llm-mode
    .venv/bin/python benchmarks/llm_mode.py [--build build/bench-full/build-cpu-llm] [--minutes 5] [--max-new-tokens 64]

One tritonserver (loopback, free ports) on the build, warmed with one short text-only question. Then, one
at a time, streamed through the gRPC client (`ask_stream`, thinking off): (1) a question about the recording
(long_form.py's: pocketsphinx-testdata speech with pauses); (2) the same question alone (text only). Per
request: seconds to the first piece of text and to the whole answer, the prompt and answer tokens; for (1)
also Triton's own split of the time between ASR (`canary_qwen_long`) and the base LLM (`llm_decoder`),
from get_inference_statistics before and after. Random weights never emit the end of turn: every answer runs
to `--max-new-tokens`, and the transcript is as long as ASR's budgets allow (an upper bound on real speech's).
Writes benchmarks/results/llm_mode.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from long_form import machine, speech_recording  # benchmarks/long_form.py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUESTION = "Summarize this recording in three sentences."


def ask(client, audio, max_new_tokens: int) -> dict:
    from canary_trt.client import Answer

    *_, answer = client.ask_stream(QUESTION, audio, None if audio is None else 16000, enable_thinking=False,
                                   max_new_tokens=max_new_tokens)  # fmt: skip
    assert isinstance(answer, Answer)
    return {"first_text_seconds": round(answer.first_delta_seconds, 2), "total_seconds": round(answer.latency_seconds, 2),
            "prompt_tokens": answer.prompt_tokens, "answer_tokens": len(answer.token_ids),
            "transcript_tokens": len(answer.transcript_token_ids), "finish_reason": answer.finish_reason}  # fmt: skip


def compute_seconds(before: dict, after: dict) -> dict[str, float]:
    """Each model's execution seconds between two get_inference_statistics snapshots."""

    def by_model(stats):
        return {m["name"]: int(m["inference_stats"]["compute_infer"].get("ns", 0)) for m in stats["model_stats"]}

    old, new = by_model(before), by_model(after)
    return {name: round((new[name] - old.get(name, 0)) / 1e9, 2) for name in new if new[name] != old.get(name, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=ROOT / "build/bench-full/build-cpu-llm")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results/llm_mode.json")
    args = parser.parse_args()

    from canary_trt.client import TranscriptionClient
    from canary_trt.export_info import read_export_info
    from canary_trt.server import TritonServer

    info = read_export_info(args.build)
    if "llm_mode" not in info:
        raise SystemExit(f"{args.build} was exported without --llm-mode: see this script's doc")
    audio = speech_recording(args.minutes)
    with TritonServer(args.build / "model_repository") as server, TranscriptionClient(server.grpc_url) as client:
        client.ask("Hello?", max_new_tokens=2)  # warm-up: sessions loaded, first-run costs paid
        before = client.triton.get_inference_statistics(as_json=True)
        about_audio = ask(client, audio, args.max_new_tokens)
        about_audio["compute_seconds_by_model"] = compute_seconds(before, client.triton.get_inference_statistics(as_json=True))
        print(f"about the recording: {about_audio}", flush=True)
        text_only = ask(client, None, args.max_new_tokens)
        print(f"text only: {text_only}", flush=True)
    result = {"machine": machine(), "build": str(args.build), "precision": info["precision"],
              "llm_mode": info["llm_mode"], "recording_seconds": args.minutes * 60, "question": QUESTION,
              "max_new_tokens": args.max_new_tokens, "enable_thinking": False,
              "about_the_recording": about_audio, "text_only": text_only}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - started:.0f} s")
