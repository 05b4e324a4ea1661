"""`canary-trt demo`: the main job end to end on this machine.

checkpoint (random tiny unless given) -> CPU export -> the bundled Triton server -> gRPC transcription of
the LibriVox clips of Debian's pocketsphinx-testdata -> the OpenAI front -> LLM mode (a question about the
first clip, answered by the base LLM from its transcript) -> transcripts and a timing table -> server stopped.
LLM mode is in the demo by default with the random tiny checkpoint; with a real one only with `llm_mode`
(its export adds the 6.9 GB fp32 base LLM).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

MAX_NEW_TOKENS = 32
QUESTION = "What is the speaker talking about? Answer in one sentence."


def run(checkpoint: Path | None, work: Path, llm_mode: bool | None = None) -> None:
    from .client import AsyncTranscriptionClient
    from .client.manifest import librivox_utterances
    from .contract import LIBRIVOX_DIR
    from .checkpoint import WEIGHTS_NAME
    from .contract import EXPORT_INFO, MODEL_REPOSITORY
    from .export.build import export
    from .export_info import read_export_info
    from .server import TritonServer

    utterances = librivox_utterances()
    clips = [u.audio for u in utterances]
    random_weights = checkpoint is None
    llm_mode = random_weights if llm_mode is None else llm_mode
    if random_weights:
        checkpoint = work / "tiny-checkpoint"
        if not (checkpoint / WEIGHTS_NAME).is_file():
            from .random_checkpoint import write_random_checkpoint

            _stage(f"writing a random-weight tiny checkpoint to {checkpoint}")
            write_random_checkpoint(checkpoint, "tiny")
    build = work / "build-cpu"
    manifest = build / EXPORT_INFO
    if not manifest.is_file() or read_export_info(build)["checkpoint"] != str(checkpoint.resolve()) or \
            ("llm_mode" in read_export_info(build)) != llm_mode:  # fmt: skip
        _stage(f"exporting {checkpoint} for CPU into {build}" + (" with LLM mode" if llm_mode else ""))
        export(checkpoint, build, target="cpu", log=lambda line: print("  " + line), llm_mode=llm_mode)
    _stage("starting the Triton server (tritonserver bundled in nvidia-pytriton, python backend, 127.0.0.1)")
    start = time.perf_counter()
    with TritonServer(build / MODEL_REPOSITORY) as server:
        print(f"  ready in {time.perf_counter() - start:.1f} s: grpc {server.grpc_url}, http {server.http_url}, "
              f"metrics {server.metrics_url}")  # fmt: skip
        _stage(f"transcribing {len(clips)} LibriVox clips over gRPC (all in flight at once, {MAX_NEW_TOKENS} new tokens max)")

        async def transcribe_all():
            async with AsyncTranscriptionClient(server.grpc_url, concurrency=len(clips)) as client:
                return await client.transcribe_many([str(c) for c in clips], max_new_tokens=MAX_NEW_TOKENS)

        start = time.perf_counter()
        results = asyncio.run(transcribe_all())
        wall = time.perf_counter() - start
        _stage("the same server through the OpenAI-compatible front (canary-trt api), called with curl")
        _openai_front(server.grpc_url, clips[0])
        if llm_mode:
            _ask(server.grpc_url, clips[0])
    if random_weights:
        print("\n  NOTE: random weights. The transcripts below are meaningless text: they prove the pipeline, not the model.")
    for utterance, result in zip(utterances, results):
        print(f"\n  {utterance.audio.name}\n    said:        {utterance.text}\n    transcribed: {' '.join(result.text.split())}")
    audio = sum(r.audio_seconds for r in results)
    print(f"\n  {'clip':<48} {'audio s':>8} {'latency s':>10} {'tokens':>7}")
    for clip, r in zip(clips, results):
        print(f"  {clip.name:<48} {r.audio_seconds:>8.2f} {r.latency_seconds:>10.2f} {len(r.token_ids):>7}")
    print(f"  {'all (wall time, concurrent)':<48} {audio:>8.2f} {wall:>10.2f}\n  RTFx {audio / wall:.1f} on this machine")
    print(f"\n  By hand: canary-trt serve --model-repository {build / 'model_repository'}\n"
          f"           canary-trt-client transcribe --url 127.0.0.1:8001 {LIBRIVOX_DIR}\n"
          f"           canary-trt api --triton-url 127.0.0.1:8001   # then: curl 127.0.0.1:8080/v1/audio/transcriptions "
          f"-F file=@{clips[0]} -F model=canary-qwen-2.5b")


def _openai_front(grpc_url: str, clip: Path) -> None:
    import shlex
    import shutil
    import subprocess

    from .openai_api.process import ApiProcess

    with ApiProcess(grpc_url, "--max-new-tokens", str(MAX_NEW_TOKENS)) as api:
        command = ["curl", "-sS", f"{api.url}/v1/audio/transcriptions", "-F", f"file=@{clip}",
                   "-F", "model=canary-qwen-2.5b", "-F", "response_format=verbose_json"]  # fmt: skip
        print(f"  canary-trt api --triton-url {grpc_url} --port {api.port}\n  $ {shlex.join(command)}")
        if not shutil.which("curl"):
            print("  (curl is not installed here: skipped)")
            return
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        print(f"  {done.stdout.strip() or done.stderr.strip()}")


def _ask(grpc_url: str, clip: Path) -> None:
    from .client import AnswerDelta, TranscriptionClient

    _stage("LLM mode: the base LLM (LoRA off) answers a question from the clip's transcript, streamed")
    print(f"  $ canary-trt-client ask --audio {clip} {QUESTION!r} --no-thinking --max-new-tokens {MAX_NEW_TOKENS}")
    with TranscriptionClient(grpc_url) as client:
        print("  answer: ", end="", flush=True)
        for piece in client.ask_stream(QUESTION, clip, enable_thinking=False, max_new_tokens=MAX_NEW_TOKENS):
            if isinstance(piece, AnswerDelta):
                print(piece.text, end="", flush=True)
    print(f"\n  transcript it was given: {' '.join((piece.transcript or '').split())}\n"
          f"  [{piece.finish_reason}; {len(piece.token_ids)} tokens; first text after {piece.first_delta_seconds:.2f} s, "
          f"all after {piece.latency_seconds:.2f} s]")


def _stage(text: str) -> None:
    print(f"== {text}", flush=True)
