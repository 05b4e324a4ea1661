"""The request budgets (export.json -> engine shapes -> the adapter's refusals), audio_check's length
buckets (padding is exact under WAV_LENS in the encoder graph the TensorRT plan is built from), and the FP8
calibration set checked before any work."""

import json

import numpy as np
import pytest

from canary_trt.contract import MAX_NEW_TOKENS, PROMPT_TOKENS, SAMPLE_RATE, Budgets, audio_rows, bucket_length
from canary_trt.export.build import export
from canary_trt.export.presets import get_preset
from canary_trt.export.trtllm import MIN_CALIB_TEXTS, check_calibration
from canary_trt.export_info import read_export_info
from canary_trt.onnx_pipeline import OnnxPipeline
from canary_trt.tokenizer import asr_prompt_ids

BUCKET = 2 * SAMPLE_RATE


def test_budget_arithmetic():
    b = Budgets()
    assert (b.max_audio_seconds, b.max_prompt_tokens, b.max_new_tokens) == (40.0, 64, MAX_NEW_TOKENS)
    assert (b.audio_rows, b.max_input_len, b.max_seq_len) == (500, 563, 691)
    assert Budgets.from_manifest({"budgets": b.to_manifest()}) == b
    assert Budgets.from_manifest({}) == b  # a build exported before budgets were recorded
    assert get_preset("h100", max_new_tokens=256).budgets == Budgets(max_new_tokens=256)
    for bad in ({"max_new_tokens": 0}, {"max_prompt_tokens": PROMPT_TOKENS - 1}, {"max_audio_seconds": 0.05}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Budgets(**bad)


def test_cpu_build_records_its_budgets(cpu_build, tiny_checkpoint, tmp_path):
    assert read_export_info(cpu_build)["budgets"] == Budgets().to_manifest()
    export(tiny_checkpoint.path, tmp_path, target="cpu", dry_run=True, max_new_tokens=300, log=lambda line: None)
    assert Budgets.from_manifest(read_export_info(tmp_path)).max_new_tokens == 300


def test_gpu_engine_is_sized_by_the_same_budgets(tiny_checkpoint, tmp_path):
    printed = []
    export(tiny_checkpoint.path, tmp_path, target="gpu", preset="l40s", dry_run=True, max_new_tokens=256,
           log=printed.append)  # fmt: skip
    budgets = Budgets.from_manifest(read_export_info(tmp_path))
    assert budgets == Budgets(max_new_tokens=256)
    command = next(line for line in printed if "trtllm-build" in line).split()
    flag = lambda name: int(command[command.index(f"--{name}") + 1])  # noqa: E731
    assert (flag("max_input_len"), flag("max_seq_len")) == (budgets.max_input_len, budgets.max_seq_len)
    assert budgets.max_seq_len == 563 + 256
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["budgets"]["max_seq_len"] == 819  # written out for a reader, too


def test_the_default_prompt_fits_the_prompt_budget(reference):
    assert len(asr_prompt_ids(reference.tokenizer)) == PROMPT_TOKENS <= Budgets().max_prompt_tokens


# --- length buckets ----------------------------------------------------------------------------------------
def test_bucket_lengths():
    max_samples = 40 * SAMPLE_RATE
    assert bucket_length(16000, 0, max_samples) == 16000  # no buckets: unchanged
    assert [bucket_length(n, BUCKET, max_samples) for n in (1600, 32000, 32001, 639999, 640000)] == \
        [32000, 32000, 64000, 640000, 640000]  # fmt: skip
    assert bucket_length(30 * SAMPLE_RATE + 5, 7 * SAMPLE_RATE, 31 * SAMPLE_RATE) == 31 * SAMPLE_RATE  # capped


def _run(session, rows, lengths):
    embeddings, out_lengths = session.run(None, {"WAV": np.stack(rows), "WAV_LENS": np.asarray(lengths, np.int32)})
    return [e[:n] for e, n in zip(embeddings, out_lengths)]


def test_bucket_padding_is_exact_under_wav_lens(cpu_build, clips):
    """The encoder graph reads only WAV_LENS samples: a clip padded to its bucket, alone or batched with
    another clip of the same bucket, gives its own embeddings and then exactly its own tokens."""
    pipeline = OnnxPipeline(cpu_build)
    session = pipeline.encoder
    a, b = clips["0880"], clips["0880"][: len(clips["0880"]) - 5000]  # different lengths, one 2-s bucket
    padded = bucket_length(len(a), BUCKET, 40 * SAMPLE_RATE)
    assert padded == bucket_length(len(b), BUCKET, 40 * SAMPLE_RATE) > len(a) > len(b)
    pad = lambda clip: np.pad(clip, (0, padded - len(clip)))  # noqa: E731
    alone = [_run(session, [clip], [len(clip)])[0] for clip in (a, b)]
    bucketed = _run(session, [pad(a), pad(b)], [len(a), len(b)])
    for want, got in zip(alone, bucketed):
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    prompt = asr_prompt_ids(pipeline.tokenizer)
    assert pipeline.generate(bucketed, prompt, 12) == pipeline.generate(alone, prompt, 12)
    assert [len(e) for e in alone] == [audio_rows(len(a)), audio_rows(len(b))]


# --- FP8 calibration set -----------------------------------------------------------------------------------
def _calibration_set(folder, texts, column="text"):
    folder.mkdir(parents=True)
    with open(folder / "train.jsonl", "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({column: text}) + "\n")
    return folder


@pytest.fixture(scope="module")
def transcripts():
    from canary_trt.client.manifest import librivox_utterances

    texts = [u.text for u in librivox_utterances()]
    return [f"{t} ({i})" for i in range(MIN_CALIB_TEXTS) for t in texts][: 2 * MIN_CALIB_TEXTS]


def test_fp8_needs_a_local_calibration_set_before_any_work(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--precision fp8 needs --calib-dataset DIR"):
        export(tiny_checkpoint.path, tmp_path / "b", target="gpu", precision="fp8", log=lambda line: None)
    assert not (tmp_path / "b").exists()  # refused before the encoder export or anything else ran
    with pytest.raises(ValueError, match="calibrates FP8 only"):
        export(tiny_checkpoint.path, tmp_path / "b", target="gpu", precision="fp16", calib_dataset=tmp_path,
               dry_run=True, log=lambda line: None)  # fmt: skip


def test_a_calibration_set_is_read_as_tensorrt_llm_reads_it(tiny_checkpoint, tmp_path, transcripts):
    fp8 = get_preset("h100", llm_quantization="fp8")
    good = _calibration_set(tmp_path / "asr-text", transcripts)
    assert check_calibration(fp8, good) == good.resolve()
    printed = []
    export(tiny_checkpoint.path, tmp_path / "b", target="gpu", precision="fp8", calib_dataset=good, dry_run=True,
           log=printed.append)  # fmt: skip
    assert f"--calib-dataset {good.resolve()}" in next(line for line in printed if "canary_trt.export.trtllm" in line)
    cases = {
        "no such directory": tmp_path / "missing",
        "non-empty 'text' rows": _calibration_set(tmp_path / "few", transcripts[: MIN_CALIB_TEXTS - 1] + ["  "]),
        "no 'text'": _calibration_set(tmp_path / "other-column", transcripts, column="sentence"),
        "its own named data set": _calibration_set(tmp_path / "my_cnn_dailymail", transcripts),
    }
    for phrase, folder in cases.items():
        with pytest.raises((ValueError, FileNotFoundError), match=phrase):
            check_calibration(fp8, folder)
