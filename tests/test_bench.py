"""The benchmark's arithmetic and inputs, without a server: WER and its normalizer, RTFx, percentiles,
manifests and audio folders, Triton statistics deltas, per-pass accounting and the report files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from canary_trt.client.api import Transcription
from canary_trt.client.cli import main
from canary_trt.client.machine import SPEED_FLAGS, describe_machine
from canary_trt.client.manifest import (
    LIBRIVOX_DIR,
    ManifestError,
    Utterance,
    librivox_utterances,
    read_audio_dir,
    read_manifest,
)
from canary_trt.client.metrics import WordErrors, corpus_errors, normalize, percentiles, rtfx, word_errors
from canary_trt.client.report import write_report
from canary_trt.client.results import Clip, summarize_pass
from canary_trt.client.stats import statistics_delta
from canary_trt.errors import InvalidInput

# --- WER ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("Mr. Smith's 2 cats!", "mister smith is 2 cats"),  # titles spelled out; Whisper reads 's as "is"
        ("He was NOT an ill-disposed young man.", "he was not an ill disposed young man"),
        ("Mrs. Dashwood, colour", "missus dashwood color"),  # British -> American spelling
        ("Hmm, uh, I mean it.", "i mean it"),  # fillers dropped
        ("I'm gonna do it", "i am going to do it"),
        ("twenty five dollars", "$25"),  # spelled-out numbers -> digits
        ("", ""),
    ],
)
def test_whisper_english_normalizer(text, normalized):
    assert normalize(text) == normalized


def test_one_deletion_in_six_words():
    errors = word_errors("the cat sat on the mat", "the cat sat on mat")
    assert errors == WordErrors(substitutions=0, deletions=1, insertions=0, reference_words=6)
    assert errors.wer == pytest.approx(1 / 6)


def test_case_and_punctuation_are_not_errors():
    assert word_errors("The cat sat on the mat.", "the cat, sat on the MAT").errors == 0


def test_substitution_and_insertion():
    errors = word_errors("a b", "a c d")
    assert (errors.substitutions, errors.deletions, errors.insertions, errors.reference_words) == (1, 0, 1, 2)
    assert errors.wer == 1.0


def test_corpus_wer_sums_errors_instead_of_averaging_rates():
    per_utterance = [word_errors("the cat sat on the mat", "the cat sat on mat"), word_errors("a b", "a c d")]
    corpus = corpus_errors(per_utterance)
    assert (corpus.errors, corpus.reference_words) == (3, 8)
    assert corpus.wer == pytest.approx(3 / 8)  # the mean of the rates would be (1/6 + 1) / 2 = 0.583


def test_an_empty_reference_has_no_rate_but_its_insertions_count():
    empty = word_errors("", "hello there")
    assert empty.insertions == 2 and empty.reference_words == 0 and empty.wer is None
    assert corpus_errors([empty, word_errors("a b", "a b")]).wer == 1.0  # 2 errors / 2 words
    assert corpus_errors([]).wer is None


# --- RTFx and percentiles ----------------------------------------------------------------------------------


def test_rtfx_is_audio_seconds_over_wall_seconds():
    assert rtfx(24.73, 0.5) == pytest.approx(49.46)
    with pytest.raises(ValueError):
        rtfx(1.0, 0.0)


def test_percentiles_interpolate_linearly_between_ranks():
    # numpy 'linear' (type 7): position (n - 1) * p / 100 between the sorted values.
    assert percentiles([4.0, 1.0, 3.0, 2.0]) == pytest.approx({"p50": 2.5, "p90": 3.7, "p99": 3.97})
    assert percentiles(list(range(1, 11)), (50, 90)) == pytest.approx({"p50": 5.5, "p90": 9.1})
    assert percentiles([0.2]) == {"p50": 0.2, "p90": 0.2, "p99": 0.2}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


# --- data sets ---------------------------------------------------------------------------------------------


def write_wav(path: Path, seconds: float = 0.5) -> Path:
    sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    return path


def write_lines(path: Path, *lines) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_manifest_resolves_relative_paths_against_its_folder(tmp_path):
    (tmp_path / "audio").mkdir()
    write_wav(tmp_path / "audio" / "a.wav")
    absolute = write_wav(tmp_path / "b.wav").resolve()
    manifest = write_lines(
        tmp_path / "set.jsonl",
        {"audio_filepath": "audio/a.wav", "duration": 0.5, "text": "hello"},
        "",  # blank lines are allowed
        {"audio_filepath": str(absolute), "text": "world"},  # duration is optional
    )
    assert read_manifest(manifest) == [
        Utterance(tmp_path / "audio" / "a.wav", "hello", 0.5),
        Utterance(absolute, "world", None),
    ]


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match=f"manifest not found: {tmp_path / 'nope.jsonl'}"):
        read_manifest(tmp_path / "nope.jsonl")


def test_bad_json_line_is_named_by_number(tmp_path):
    write_wav(tmp_path / "a.wav")
    manifest = write_lines(tmp_path / "set.jsonl", {"audio_filepath": "a.wav", "text": "x"}, '{"audio_filepath": ')
    with pytest.raises(ManifestError, match=r"set\.jsonl, line 2: not valid JSON"):
        read_manifest(manifest)


def test_missing_key_names_line_and_key(tmp_path):
    write_wav(tmp_path / "a.wav")
    good, bad = {"audio_filepath": "a.wav", "text": "x"}, {"audio_filepath": "a.wav"}
    manifest = write_lines(tmp_path / "set.jsonl", good, bad)
    with pytest.raises(ManifestError, match=r"line 2: missing key 'text'"):
        read_manifest(manifest)


def test_missing_audio_file_is_named(tmp_path):
    manifest = write_lines(tmp_path / "set.jsonl", {"audio_filepath": "gone.wav", "text": "x"})
    with pytest.raises(ManifestError, match=rf"line 1: audio file not found: {tmp_path / 'gone.wav'}"):
        read_manifest(manifest)


def test_duration_must_be_a_number(tmp_path):
    write_wav(tmp_path / "a.wav")
    manifest = write_lines(tmp_path / "set.jsonl", {"audio_filepath": "a.wav", "text": "x", "duration": "long"})
    with pytest.raises(ManifestError, match="line 1: 'duration' must be a number"):
        read_manifest(manifest)


def test_audio_dir_pairs_each_clip_with_its_txt(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, text in (("b", "second"), ("a", "first\n"), ("sub/c", "third")):
        write_wav(tmp_path / f"{name}.wav")
        (tmp_path / f"{name}.txt").write_text(text)
    (tmp_path / "notes.txt").write_text("a transcript without audio is ignored")
    assert read_audio_dir(tmp_path) == [
        Utterance(tmp_path / "a.wav", "first"),
        Utterance(tmp_path / "b.wav", "second"),
        Utterance(tmp_path / "sub" / "c.wav", "third"),
    ]


def test_audio_without_transcript_is_an_error_not_skipped(tmp_path):
    write_wav(tmp_path / "a.wav")
    (tmp_path / "a.txt").write_text("first")
    write_wav(tmp_path / "lonely.wav")
    with pytest.raises(ManifestError, match=r"1 audio file\(s\) .* no \.txt transcript .*lonely\.wav"):
        read_audio_dir(tmp_path)
    with pytest.raises(ManifestError, match="not a directory"):
        read_audio_dir(tmp_path / "a.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no wav/flac/ogg files"):
        read_audio_dir(empty)


def test_librivox_manifest_round_trips(tmp_path):
    utterances = librivox_utterances()
    assert len(utterances) == 5
    assert utterances[1] == Utterance(
        LIBRIVOX_DIR / "sense_and_sensibility_01_austen_64kb-0880.wav", "he was not an ill disposed young man"
    )
    assert main(["manifest-librivox", "--out", str(tmp_path / "librivox.jsonl")]) == 0
    entries = [json.loads(line) for line in (tmp_path / "librivox.jsonl").read_text().splitlines()]
    assert [Path(e["audio_filepath"]).is_absolute() for e in entries] == [True] * 5
    assert sum(e["duration"] for e in entries) == pytest.approx(24.73)
    assert [u.text for u in read_manifest(tmp_path / "librivox.jsonl")] == [u.text for u in utterances]


# --- Triton statistics and the report ----------------------------------------------------------------------


def model_stats(name, inferences, executions, queue_ns, batches):
    """A model's entry as get_inference_statistics(as_json=True) returns it (int64 as strings)."""
    return {
        "name": name, "version": "1", "inference_count": str(inferences), "execution_count": str(executions),
        "inference_stats": {"success": {"count": str(inferences), "ns": "1"}, "fail": {},
                            "queue": {"count": str(inferences), "ns": str(queue_ns)}},
        "batch_stats": [{"batch_size": str(size), "compute_infer": {"count": str(runs), "ns": "1"}}
                        for size, runs in batches.items()],
    }  # fmt: skip


def test_statistics_delta_is_what_the_pass_added():
    before = {"model_stats": [model_stats("decoder", 3, 3, 3_000_000, {1: 3})]}
    # 3 more executions, of 1 + 3 + 4 = 8 requests
    after = {"model_stats": [model_stats("decoder", 11, 6, 11_000_000, {1: 4, 4: 1, 3: 1})]}
    decoder = statistics_delta(before, after)["decoder"]
    assert (decoder["inference_count"], decoder["execution_count"], decoder["mean_batch_size"]) == (8, 3, 2.667)
    assert decoder["ms_per_request"]["queue"] == 1.0  # 8e6 ns over 8 requests
    assert decoder["ms_per_request"]["compute_infer"] is None  # no such counter in this snapshot
    assert decoder["batch_size_histogram"] == {"1": 1, "3": 1, "4": 1}  # sorted by size
    assert decoder["success_count"] == 8 and decoder["fail_count"] == 0


def test_every_utterance_is_accounted_for_once_and_the_report_renders(tmp_path):
    utterances = [Utterance(Path(f"/data/{n}.wav"), "the cat sat on the mat") for n in "abc"]
    clips = [Clip(0, utterances[0], np.zeros(32000, np.float32)), Clip(1, utterances[1], np.zeros(16000, np.float32)),
             Clip(2, utterances[2], None, "/data/c.wav: cannot decode audio")]  # fmt: skip
    server_error = "InferenceServerException: boom"
    outcomes = [Transcription("the cat sat on mat", [1, 2, 3], 2.0, 0.5), server_error, clips[2].error]
    summary = summarize_pass(4, 1, 0.8, clips, outcomes, triton={})
    assert (summary["done"], summary["failed"]) == (1, 2)
    assert summary["rtfx"] == pytest.approx(2.0 / 0.8)
    assert summary["wer"]["wer"] == pytest.approx(1 / 6)
    assert [(u["index"], u["status"], u["error"]) for u in summary["utterances"]] == [
        (0, "done", None), (1, "failed", server_error), (2, "failed", "/data/c.wav: cannot decode audio"),
    ]  # fmt: skip
    assert summary["utterances"][0]["word_errors"] == {
        "errors": 1, "substitutions": 0, "deletions": 1, "insertions": 0, "reference_words": 6,
    }  # fmt: skip
    report = {
        "started": "now", "machine": describe_machine(), "passes": [summary],
        "server": {"url": "h:1", "version": "2.51.0", "model": "canary_qwen", "max_batch_size": 8,
                   "models_max_batch_size": {"canary_qwen": 8}},
        "dataset": {"source": "test", "utterances": 3, "audio_seconds": 3.0, "unreadable": 1},
        "method": {"max_new_tokens": None, "warmup_requests": 1, "wer": "w", "rtfx": "r", "latency": "l",
                   "percentiles": "p", "triton": "t"},
    }  # fmt: skip
    written = write_report(report, tmp_path / "out")
    assert [p.name for p in written] == ["report.json", "report.md", "rtfx_latency.png"]
    assert json.loads(written[0].read_text()) == report
    assert "InferenceServerException: boom" in written[1].read_text()
    assert written[2].read_bytes().startswith(b"\x89PNG")


def test_a_long_recordings_segments_survive_resume():
    """A partial row keeps the segments (ids split back by count), so a resumed pass reports them too."""
    from canary_trt.client.api import Segment
    from canary_trt.client.results import Outcome

    segments = [Segment(0.5, 12.25, "one", [1, 2], True), Segment(13.0, 20.0, "two", [3], False)]
    done = Transcription("one two", [1, 2, 3], 60.0, 4.0, "h:1", segments)
    row = json.loads(json.dumps(Outcome.of(done).to_json()))
    assert Outcome.from_json(row).transcription() == done
    utterance = Utterance(Path("/data/long.wav"), "one two")
    summary = summarize_pass(1, 0, 4.0, [Clip(0, utterance, np.zeros(16000 * 60, np.float32))], [done], triton={})
    assert (summary["segments"], summary["truncated_segments"]) == (2, 1)
    assert summary["utterances"][0]["segments"][1] == {"start_s": 13.0, "end_s": 20.0, "text": "two", "tokens": 1,
                                                       "truncated": False}  # fmt: skip


def test_max_new_tokens_with_long_recordings_is_refused_from_headers(tmp_path):
    from canary_trt.client.bench import run_benchmark

    long = tmp_path / "long.flac"
    sf.write(long, np.zeros(16000 * 41, np.float32), 16000)
    utterances = [Utterance(write_wav(tmp_path / "short.wav"), "a"), Utterance(long, "b")]
    with pytest.raises(InvalidInput, match=r"--max-new-tokens applies to clips of at most 40 s, and 1 are longer "
                                           rf"\({long}\): canary_qwen_long"):  # fmt: skip
        run_benchmark("127.0.0.1:1", utterances, [1], max_new_tokens=8)  # refused before connecting


def test_machine_description():
    machine = describe_machine()
    assert machine["cpu_cores"] >= 1 and machine["memory_gib"] > 0 and machine["cpu"]
    assert machine["gpu"]  # a name from nvidia-smi, or "none"
    # the vector extensions that decide int8/bf16 speed, as /proc/cpuinfo lists them
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    assert machine["cpu_flags"] == [f for f in SPEED_FLAGS if f in flags]


# --- command line, without a server -----------------------------------------------------------------------


def test_client_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises
        "import canary_trt.client, canary_trt.client.cli, canary_trt.client.bench, canary_trt.client.report\n"
        "from canary_trt.client import endpoints, machine, results, resume, retry, stats, tensors\n"
        "from canary_trt.client.metrics import word_errors; word_errors('a', 'b')\n"
        "from canary_trt.client.cli import main; main(['manifest-librivox', '--out', sys.argv[1]])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "/dev/null"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_clear_errors_exit_2(tmp_path, capsys):
    assert main(["bench", "--url", "127.0.0.1:1", "--manifest", str(tmp_path / "nope.jsonl")]) == 2
    assert f"error: manifest not found: {tmp_path / 'nope.jsonl'}" in capsys.readouterr().err
    assert main(["transcribe", "--url", "127.0.0.1:1", str(tmp_path)]) == 2
    assert "error: no wav/flac/ogg files in" in capsys.readouterr().err
    write_wav(tmp_path / "a.wav")
    assert main(["transcribe", "--url", "127.0.0.1:1", str(tmp_path / "a.wav")]) == 2  # nothing listens there
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--url", "h:1", "--audio-dir", str(tmp_path), "--concurrency", "1,0"])
