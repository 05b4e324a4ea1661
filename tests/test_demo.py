"""The README's main job, `canary-trt demo` (what `./build.sh --demo` runs), end to end."""

import json

import pytest

from canary_trt.cli import main

pytestmark = pytest.mark.slow  # the whole demo: export, serve, transcribe


def test_demo_exports_serves_and_transcribes(tmp_path, capsys):
    assert main(["demo", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "random weights. The transcripts below are meaningless text" in out
    assert out.count("transcribed: ") == 5
    assert "all (wall time, concurrent)" in out and "RTFx" in out
    assert (tmp_path / "build-cpu" / "model_repository" / "canary_qwen" / "config.pbtxt").is_file()
    # the curl step: the OpenAI-compatible front answers with the gRPC transcript of the first clip
    (answer,) = [json.loads(line) for line in out.splitlines() if line.startswith('  {"task":"transcribe"')]
    first = next(line for line in out.splitlines() if "transcribed: " in line).split("transcribed: ", 1)[1]
    assert (" ".join(answer["text"].split()), answer["language"]) == (first, "english")
    # LLM mode: the base LLM answered, streamed, from the first clip's transcript (the server's default budget:
    # longer than the 32 tokens above, on random weights that never stop)
    assert "== LLM mode" in out
    (answer_line,) = [line for line in out.splitlines() if line.startswith("  answer: ")]
    transcript = next(line for line in out.splitlines() if "transcript it was given: " in line)
    assert answer_line.strip() != "answer:" and transcript.split(": ", 1)[1].startswith(first.split()[0])
