"""Faults lose nothing: retries with backoff, what is (not) retried, partial results and resume after the
server is killed mid-bench, and bad files in `canary-trt-client transcribe`.

Live parts run the real tritonserver on CPU with the tiny random checkpoint; bounded (well under 90 s)."""

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from canary_trt.audio import load_audio
from canary_trt.client.api import AsyncTranscriptionClient, Transcription
from canary_trt.client.cli import main
from canary_trt.client.manifest import Utterance, librivox_utterances, write_manifest
from canary_trt.contract import LIBRIVOX_DIR
from canary_trt.client.results import Clip
from canary_trt.client.resume import PARTIAL_NAME, PartialResults, fingerprint
from canary_trt.client.retry import RetriesExhausted, RetryPolicy, is_overload, is_retryable
from canary_trt.server import TritonServer
from canary_trt.transcribe import transcribe

MAX_NEW = 24
REPEAT = 6  # 5 clips x 6 = 30 utterances


# --- the retry policy, without a server ---------------------------------------------------------------------


def test_backoff_doubles_from_half_a_second_and_is_capped():
    assert RetryPolicy().attempts == 5 and RetryPolicy().delays() == [0.5, 1.0, 2.0, 4.0]
    assert RetryPolicy(attempts=7, initial=1.0, max_delay=8.0).delays() == [1, 2, 4, 8, 8, 8]
    assert RetryPolicy(attempts=1).delays() == []
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    "status, message, retried, overload",
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses; Connection refused", True, False),
        ("StatusCode.UNAVAILABLE", "Server is stopping", True, False),
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", True, True),  # Triton's queue policy
        ("StatusCode.UNAVAILABLE", "Request timeout expired", True, True),
        ("StatusCode.RESOURCE_EXHAUSTED", "Exceeds maximum queue size", True, True),
        ("StatusCode.RESOURCE_EXHAUSTED", "Received message larger than max", False, False),
        ("StatusCode.INVALID_ARGUMENT", "WAV: expected FP32", False, False),  # the request's own fault
        ("StatusCode.INTERNAL", "model crashed", False, False),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", False, False),  # may still be running
        ("StatusCode.CANCELLED", "Locally cancelled by application!", False, False),
    ],
)
def test_which_errors_are_retried(status, message, retried, overload):
    error = InferenceServerException(msg=message, status=status)
    assert (is_retryable(error), is_overload(error)) == (retried, overload)


def test_client_side_errors_are_not_retried():
    assert not is_retryable(ValueError("cannot decode audio")) and not is_retryable(FileNotFoundError("x"))


def test_an_unreachable_server_is_retried_then_given_up(tmp_path):
    async def run():
        async with AsyncTranscriptionClient("127.0.0.1:1", retry=RetryPolicy(attempts=3, initial=0.1)) as client:
            return await client.transcribe(np.zeros(1600, np.float32), sample_rate=16000)

    start = time.monotonic()
    with pytest.raises(RetriesExhausted) as caught:
        asyncio.run(run())
    assert time.monotonic() - start >= 0.3  # paused 0.1 + 0.2 s between the 3 attempts
    assert caught.value.attempts == 3 and "UNAVAILABLE" in str(caught.value) and not caught.value.overload


def test_partial_file_resumes_only_the_same_data_set(tmp_path):
    utterances = [Utterance(Path(f"/data/{n}.wav"), "a b") for n in "ab"]
    header = fingerprint(utterances, 24, "canary_qwen")
    path = tmp_path / PARTIAL_NAME
    partial = PartialResults(path, header)
    partial.append(4, Clip(0, utterances[0], None), Transcription("a b", [1, 2], 1.0, 0.1))
    partial.append(4, Clip(1, utterances[1], None), "RetriesExhausted: server unavailable")
    with open(path, "a") as f:
        f.write('{"concurrency": 4, "index": 1, "sta')  # torn by a crash mid-write
    again = PartialResults(path, header)
    assert set(again.done(4)) == {0} and again.done(4)[0]["token_ids"] == [1, 2] and again.done(1) == {}
    with pytest.raises(ValueError, match="--fresh"):
        PartialResults(path, fingerprint(utterances, 8, "canary_qwen"))  # another --max-new-tokens
    with pytest.raises(ValueError, match="another data set"):
        PartialResults(path, fingerprint(utterances, 24, "canary_qwen", prompt="Write it down:"))  # another --prompt
    assert PartialResults(path, fingerprint(utterances, 8, "canary_qwen"), fresh=True).rows == {}


# --- live: kill the server mid-bench, then resume -----------------------------------------------------------


def _kill_after_first_result(server: TritonServer, partial: Path, killed: dict) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if partial.is_file() and '"status": "done"' in partial.read_text():
            os.killpg(server.pid, signal.SIGKILL)  # tritonserver and its python stubs, no goodbye
            killed["at"] = time.monotonic()
            return
        time.sleep(0.005)


def test_bench_survives_a_killed_server_and_resumes(cpu_build, reference, tmp_path, capsys):
    utterances = librivox_utterances() * REPEAT
    manifest = write_manifest(tmp_path / "set.jsonl", utterances)
    out = tmp_path / "report"
    partial = out / PARTIAL_NAME
    argv = ["bench", "--manifest", str(manifest), "--concurrency", "4", "--warmup", "0", "--max-new-tokens",
            str(MAX_NEW), "--out", str(out), "--attempts", "3", "--backoff", "0.2"]  # fmt: skip

    server = TritonServer(cpu_build / "model_repository").start()
    killed = {}
    try:
        killer = threading.Thread(target=_kill_after_first_result, args=(server, partial, killed), daemon=True)
        killer.start()
        assert main([*argv, "--url", server.grpc_url]) == 1  # ends by itself: retries exhausted
        killer.join(5)
    finally:
        server.stop()
    assert killed, "the server was never killed"
    first = json.loads((out / "report.json").read_text())["passes"][0]
    assert sorted(u["index"] for u in first["utterances"]) == list(range(len(utterances)))  # each once
    assert first["done"] >= 1 and first["failed"] >= 1 and first["done"] + first["failed"] == len(utterances)
    for u in first["utterances"]:
        if u["status"] == "failed":
            assert u["error_kind"] == "unavailable" and "gave up after 3 attempt(s)" in u["error"]
    saved = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
    assert {r["index"] for r in saved if r["status"] == "done"} == {
        u["index"] for u in first["utterances"] if u["status"] == "done"
    }
    capsys.readouterr()

    with TritonServer(cpu_build / "model_repository") as restarted:  # a new server on the same repository
        assert main([*argv, "--url", restarted.grpc_url]) == 0
    printed = capsys.readouterr()
    assert f"concurrency 4: {len(utterances)} utterances, {len(utterances)} done ({first['done']} resumed" in printed.out
    assert "resume" not in printed.err  # nothing left to resume
    report = json.loads((out / "report.json").read_text())
    (final,) = report["passes"]
    assert sorted(u["index"] for u in final["utterances"]) == list(range(len(utterances)))
    assert (final["done"], final["failed"]) == (len(utterances), 0)
    assert (final["resumed"], final["sent"]) == (first["done"], first["failed"])
    assert not partial.exists()  # complete: the report holds it all
    assert "resumed from an earlier run" in (out / "report.md").read_text()

    expected = {}
    for u in librivox_utterances():
        (want,) = transcribe(reference, [load_audio(u.audio)], max_new_tokens=MAX_NEW)
        expected[str(u.audio)] = want.token_ids
    for u in final["utterances"]:
        assert u["token_ids"] == expected[u["audio"]], u


# --- live: bad files in `transcribe` ------------------------------------------------------------------------


def test_transcribe_reports_missing_corrupt_and_unsupported_files_and_goes_on(cpu_build, tmp_path, capsys):
    good = LIBRIVOX_DIR / "sense_and_sensibility_01_austen_64kb-0880.wav"
    (tmp_path / "notes.txt").write_text("this is not audio\n")
    (tmp_path / "renamed.mp3").write_text("a text file renamed .mp3\n")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(256)))
    (tmp_path / "truncated.wav").write_bytes(good.read_bytes()[:46])  # a header and one sample
    (tmp_path / "unreadable.wav").write_bytes(good.read_bytes())
    (tmp_path / "unreadable.wav").chmod(0)
    names = ["missing.wav", "notes.txt", "renamed.mp3", "corrupt.wav", "truncated.wav", "unreadable.wav"]
    with TritonServer(cpu_build / "model_repository") as server:
        argv = ["transcribe", "--url", server.grpc_url, "--max-new-tokens", "8", "--json",
                *(str(tmp_path / n) for n in names), str(good)]  # fmt: skip
        assert main(argv) == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [Path(r["audio"]).name for r in rows] == [*names, good.name]
    assert "audio file not found" in rows[0]["error"]
    for row in rows[1:4]:
        assert "cannot decode audio" in row["error"], row
    assert "too short" in rows[4]["error"]  # decodes, but the server refuses it: not retried, reported
    if os.geteuid() != 0:  # root reads anything
        assert "error" in rows[5]
    assert "text" in rows[-1] and rows[-1]["token_ids"]
    failed_lines = [line for line in captured.err.splitlines() if "transcribe: failed: " in line]
    for name in names[:5]:  # each named on its own line
        assert sum(str(tmp_path / name) in line for line in failed_lines) == 1, name
