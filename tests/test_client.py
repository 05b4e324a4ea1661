"""Live: the gRPC clients and `canary-trt-client` against the real tritonserver on CPU (tiny random checkpoint).

Transcripts and token ids must equal the PyTorch reference run on the same 16 kHz audio the client sends."""

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from canary_trt.audio import load_audio
from canary_trt.client import AsyncTranscriptionClient, TranscriptionClient
from canary_trt.client.cli import main
from canary_trt.client.manifest import librivox_utterances, write_manifest
from canary_trt.contract import LIBRIVOX_DIR
from canary_trt.transcribe import transcribe

MAX_NEW = 8
PATHS = [LIBRIVOX_DIR / f"sense_and_sensibility_01_austen_64kb-{n}.wav" for n in ("0880", "0930")]
CD_RATE = 44100


def cd_stereo(path: Path) -> np.ndarray:
    """The clip at 44.1 kHz, two different channels: the client must downmix and resample."""
    mono = soxr.resample(load_audio(path), 16000, CD_RATE)
    return np.stack([mono, 0.5 * mono], axis=1)


@pytest.fixture(scope="module")
def cases(reference):
    """(audio, sample_rate, expected) for each clip as a path, as encoded bytes and as a 44.1 kHz stereo array."""
    cases = []
    for path in PATHS:
        (from_file,) = transcribe(reference, [load_audio(path)], max_new_tokens=MAX_NEW)
        stereo = cd_stereo(path)
        (from_array,) = transcribe(reference, [load_audio(stereo, CD_RATE)], max_new_tokens=MAX_NEW)
        cases += [(path, None, from_file), (path.read_bytes(), None, from_file), (stereo, CD_RATE, from_array)]
    return cases


def test_sync_client_matches_the_reference(server, cases):
    with TranscriptionClient(server.grpc_url) as client:
        for audio, rate, want in cases:
            got = client.transcribe(audio, sample_rate=rate, max_new_tokens=MAX_NEW)
            assert (got.token_ids, got.text) == (want.token_ids, want.text)
            assert got.audio_seconds == pytest.approx(want.audio_seconds, abs=1e-3)


def test_async_client_matches_the_reference(server, cases):
    async def run(audio, rate):
        async with AsyncTranscriptionClient(server.grpc_url, concurrency=4) as client:
            return await client.transcribe_many(audio, sample_rate=rate, max_new_tokens=MAX_NEW)

    for rate in (None, CD_RATE):  # transcribe_many takes one sample rate for all
        chosen = [case for case in cases if case[1] == rate]
        results = asyncio.run(run([audio for audio, _, _ in chosen], rate))
        assert [(r.token_ids, r.text) for r in results] == [(w.token_ids, w.text) for _, _, w in chosen]


def test_cli_transcribe_reports_a_corrupt_file_and_goes_on(server, tmp_path, capsys):
    for path in PATHS:
        shutil.copy(path, tmp_path)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not a wav file")
    # a folder's flac files count too (not silent: all-zero audio is refused)
    sf.write(tmp_path / "quiet.flac", 0.01 * np.sin(np.arange(8000, dtype=np.float32) / 5), 16000)
    command = ["transcribe", "--url", server.grpc_url, "--max-new-tokens", str(MAX_NEW), "--concurrency", "2"]

    assert main([*command, str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        str(tmp_path / name) for name in ("quiet.flac", PATHS[0].name, PATHS[1].name)  # sorted
    ]
    assert f"failed: {tmp_path / 'broken.wav'}: cannot decode audio" in err

    assert main([*command, "--json", str(tmp_path / "broken.wav"), str(tmp_path / PATHS[0].name)]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["audio"].endswith("broken.wav") and "cannot decode audio" in rows[0]["error"]
    assert set(rows[1]) >= {"audio", "text", "token_ids", "audio_seconds", "latency_seconds"}
    assert len(rows[1]["token_ids"]) <= MAX_NEW


def test_cli_bench_on_librivox(server, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "librivox.jsonl", librivox_utterances())
    out = tmp_path / "report"
    argv = ["bench", "--url", server.grpc_url, "--manifest", str(manifest), "--concurrency", "1,4", "--warmup", "1",
            "--max-new-tokens", str(MAX_NEW), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "RTFx" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "rtfx_latency.png"]

    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"schema", "started", "machine", "server", "dataset", "method", "passes"}
    assert {"cpu", "cpu_cores", "memory_gib", "gpu"} <= set(report["machine"])
    assert report["server"]["version"] and report["server"]["max_batch_size"] >= 1
    assert report["dataset"]["utterances"] == 5 and report["dataset"]["audio_seconds"] == pytest.approx(24.73)
    assert [p["concurrency"] for p in report["passes"]] == [1, 4]
    for p in report["passes"]:
        assert sorted(u["index"] for u in p["utterances"]) == [0, 1, 2, 3, 4]  # each once
        assert all(u["status"] == "done" for u in p["utterances"]) and (p["done"], p["failed"]) == (5, 0)
        assert p["rtfx"] > 0 and p["wer"]["wer"] >= 0 and p["wer"]["reference_words"] == 71
        assert set(p["latency_seconds"]) == {"p50", "p90", "p99", "mean", "max"}
        decoder = p["triton"]["decoder"]
        assert decoder["inference_count"] == 5  # the timed pass only: the warm-up request is excluded
        assert sum(decoder["batch_size_histogram"].values()) == decoder["execution_count"]
        assert set(decoder["ms_per_request"]) == {"queue", "compute_input", "compute_infer", "compute_output"}
    assert "## Concurrency 4" in (out / "report.md").read_text()


def test_timeout_fails_a_slow_request_as_a_timeout_and_the_rest_go_on(server, tmp_path, capsys):
    """--timeout: a request not answered in time fails by name as a timeout (not retried); bench files it
    under "timeout"; the server keeps serving."""
    command = ["--url", server.grpc_url, "--timeout", "0.02"]  # far below one generation of 128 tokens
    assert main(["transcribe", *command, str(PATHS[0])]) == 1
    assert f"failed: {PATHS[0]}: " in capsys.readouterr().err

    manifest = write_manifest(tmp_path / "one.jsonl", librivox_utterances()[:1])
    assert main(["bench", *command, "--manifest", str(manifest), "--concurrency", "1", "--warmup", "0",
                 "--out", str(tmp_path / "report")]) == 1  # fmt: skip
    (only,) = json.loads((tmp_path / "report" / "report.json").read_text())["passes"]
    assert only["failed_by_kind"] == {"timeout": 1} and "Deadline" in only["utterances"][0]["error"]
    with TranscriptionClient(server.grpc_url) as client:
        assert client.transcribe(PATHS[0], max_new_tokens=MAX_NEW).token_ids


def test_cli_bench_sends_the_prompt(server, reference, tmp_path):
    """bench --prompt: every request carries the instruction; tokens equal the reference's with it."""
    instruction = "Write down what is said:"
    (utterance,) = librivox_utterances()[:1]
    manifest = write_manifest(tmp_path / "one.jsonl", [utterance])
    assert main(["bench", "--url", server.grpc_url, "--manifest", str(manifest), "--concurrency", "1",
                 "--warmup", "0", "--max-new-tokens", str(MAX_NEW), "--prompt", instruction,
                 "--out", str(tmp_path / "report")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["method"]["prompt"] == instruction
    (want,) = transcribe(reference, [load_audio(utterance.audio)], max_new_tokens=MAX_NEW, instruction=instruction)
    (default,) = transcribe(reference, [load_audio(utterance.audio)], max_new_tokens=MAX_NEW)
    assert report["passes"][0]["utterances"][0]["token_ids"] == want.token_ids != default.token_ids
