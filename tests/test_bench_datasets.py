"""`bench --dataset`: sets read with `datasets` (a local copy laid out as the Hub's, nothing downloaded), the
leaderboard's normalizer, per-set and mean arithmetic, and, live, the leaderboard preset end to end with resume."""

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest

from canary_trt.audio import load_audio
from canary_trt.client.cli import main
from canary_trt.client.datasets_source import DatasetError, DatasetSource, DatasetSpec
from canary_trt.client.leaderboard import HUB_DATASET, PUBLISHED_MEAN_WER, SETS, mean_wer_percent, overall_rtfx, preset_specs, set_wer_percent
from canary_trt.client.manifest import librivox_utterances
from canary_trt.client.metrics import normalize
from canary_trt.transcribe import transcribe

MAX_NEW = 8

# --- the leaderboard's normalizer ----------------------------------------------------------------------------

# Expected values are the leaderboard's own normalizer's output (open_asr_leaderboard normalizer/ at 43e749d3, run
# on these inputs); the last three are where whisper_normalizer 0.1.15 alone would differ.
@pytest.mark.parametrize(
    "text, normalized",
    [
        ("It's 3:45 p.m. on the 21st of March, 1999.", "it is 3 45 p m on the 21st of march 1999"),
        ("one hundred and twenty three thousand four hundred fifty six", "123456"),
        ("$1,000,000 and ten percent", "$1000000 and 10%"),
        ("zero point five", "0.5"),
        ("nineteen ninety nine", "1999"),
        ("the organisation's behaviour", "the organization is behavior"),
        ("centre theatre catalogue", "center theater catalog"),
        ("aeroplane grey programme", "airplane gray program"),
        ("they'd've", "they would have"),
        ("won't can't shouldn't", "will not can not should not"),
        ("He's been there", "he has been there"),
        ("We've got it, y'all", "we have got it you all"),
        ("Mr. Smith's 2 cats!", "mister smith is 2 cats"),
        ("Dr. Jones Jr.", "doctor jones junior"),
        ("mm-hmm, uh, I mean it", "i mean it"),
        ("[laughter] okay (inaudible)", "okay"),
        ("Ms. Müller's café", "ms muller is cafe"),
        ("I kinda dunno, 'cause it's sorta odd", "i kinda dunno cause it is sorta odd"),  # whisper_normalizer expands these
        ("ｍｍ okay", "hmm okay"),  # full-width letters become "mm" after the filler step; the leaderboard maps it
    ],
)
def test_normalizer_matches_the_leaderboards(text, normalized):
    assert normalize(text) == normalized


def test_whisper_normalizer_alone_differs_where_the_leaderboard_does():
    """Why metrics.py adjusts it: the plain package expands colloquialisms the leaderboard keeps."""
    from whisper_normalizer.english import EnglishTextNormalizer

    assert EnglishTextNormalizer()("I kinda dunno") == "i kind of do not know" != normalize("I kinda dunno")


# --- arithmetic --------------------------------------------------------------------------------------------


def test_per_set_wer_is_a_rounded_percent_and_the_mean_is_their_plain_mean():
    assert set_wer_percent(0.101949) == 10.19 and set_wer_percent(None) is None
    published = [s.published_wer for s in SETS]
    assert published == [10.19, 10.45, 9.43, 1.61, 3.1, 1.90, 2.71, 5.66]
    assert mean_wer_percent(published) == PUBLISHED_MEAN_WER == 5.63  # the card's eight give its headline
    # a plain mean of rates, not corpus WER: a small set counts as much as a big one
    assert mean_wer_percent([set_wer_percent(1 / 10), set_wer_percent(300 / 1000)]) == 20.0
    assert mean_wer_percent([1.0, None]) is None and mean_wer_percent([]) is None


def test_overall_rtfx_is_total_audio_over_total_time():
    assert overall_rtfx([100.0, 300.0], [1.0, 3.0]) == 100.0  # not the mean of per-set RTFx
    assert overall_rtfx([100.0, 300.0], [1.0, 1.0]) == 200.0
    assert overall_rtfx([5.0], [0.0]) is None


def test_the_preset_is_the_leaderboards_eight_sets():
    assert [spec for spec, _ in preset_specs()] == [
        f"{HUB_DATASET}:{config}"
        for config in ("ami:test", "earnings22:test", "gigaspeech:test", "librispeech:test.clean",
                       "librispeech:test.other", "spgispeech:test", "tedlium:test", "voxpopuli:test")
    ]  # fmt: skip
    assert HUB_DATASET == "hf-audio/esb-datasets-test-only-sorted"


def test_dataset_spec():
    assert DatasetSpec.parse("org/name") == DatasetSpec("org/name", None, "test")
    assert DatasetSpec.parse("org/name:librispeech:test.clean") == DatasetSpec("org/name", "librispeech", "test.clean")
    assert DatasetSpec.parse("org/name:librispeech:test.clean").slug == "name-librispeech-test.clean"
    for bad in ("", "a:b:c:d", "a::b"):
        with pytest.raises(DatasetError, match="expected ID_OR_PATH"):
            DatasetSpec.parse(bad)


# --- a local copy of the leaderboard's data set ------------------------------------------------------------

EMPTY_REFERENCES = {"ami": "ignore time segment in scoring", "tedlium": ""}  # rows the leaderboard drops


def _audio_table(rows: list[tuple[str, str, bytes]]) -> datasets.Dataset:
    """id, text and an Audio column of encoded bytes (cast from a struct: writing Audio needs no torchcodec)."""
    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                  "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})  # fmt: skip
    table = {"id": [r[0] for r in rows], "text": [r[1] for r in rows],
             "audio": [{"bytes": r[2], "path": f"{r[0]}.wav"} for r in rows]}  # fmt: skip
    return datasets.Dataset.from_dict(table, features=features).cast_column("audio", datasets.Audio())


@pytest.fixture(scope="module")
def leaderboard_copy(tmp_path_factory) -> Path:
    """The eight configs/splits as parquet with a README `configs:` block, as hf-audio/esb-datasets-test-only-sorted
    is on the Hub; two real LibriVox clips per set (ami and tedlium also carry one reference the leaderboard drops)."""
    root = tmp_path_factory.mktemp("esb")
    clips = librivox_utterances()
    configs = []
    for n, s in enumerate(SETS):
        rows = [(f"{s.config}/{clips[(2 * n + k) % 5].audio.stem}", clips[(2 * n + k) % 5].text.upper() + ".",
                 clips[(2 * n + k) % 5].audio.read_bytes()) for k in range(2)]  # fmt: skip
        if s.config in EMPTY_REFERENCES and s.split == "test":
            rows.insert(1, (f"{s.config}/dropped", EMPTY_REFERENCES[s.config], clips[0].audio.read_bytes()))
        (root / s.config).mkdir(exist_ok=True)
        _audio_table(rows).to_parquet(str(root / s.config / f"{s.split}-00000-of-00001.parquet"))
    for config in dict.fromkeys(s.config for s in SETS):
        splits = [s.split for s in SETS if s.config == config]
        configs.append(f"- config_name: {config}\n  data_files:\n"
                       + "".join(f"  - split: {split}\n    path: {config}/{split}-*\n" for split in splits))  # fmt: skip
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    return root


def test_a_local_copy_streams_through_the_hub_path(leaderboard_copy):
    """Same load_dataset call as a Hub id; references as written, audio decoded by the client's loader from
    the stored bytes, equal to decoding the file; dropped references are counted, not kept."""
    clips = librivox_utterances()
    source = DatasetSource(DatasetSpec.parse(f"{leaderboard_copy}:ami:test"))
    samples = list(source.samples())
    assert [s.index for s in samples] == [0, 1] and source.skipped == 1
    assert [s.utterance.text for s in samples] == [clips[0].text.upper() + ".", clips[1].text.upper() + "."]
    assert str(samples[0].utterance.audio) == f"{leaderboard_copy}:ami:test/ami/{clips[0].audio.stem}"
    assert np.array_equal(samples[1].decode(), load_audio(clips[1].audio))

    # --max-samples takes the first N rows before the filter, as the leaderboard's --max_eval_samples does
    first_two = DatasetSource(DatasetSpec.parse(f"{leaderboard_copy}:ami:test"), max_samples=2)
    assert len(list(first_two.samples())) == 1 and first_two.skipped == 1


def test_a_save_to_disk_folder_reads_the_same(leaderboard_copy, tmp_path):
    clips = librivox_utterances()[:3]
    table = _audio_table([(u.audio.stem, u.text, u.audio.read_bytes()) for u in clips])
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "disk"))
    samples = list(DatasetSource(DatasetSpec.parse(str(tmp_path / "disk"))).samples())
    assert [s.utterance.text for s in samples] == [u.text for u in clips]
    assert all(np.array_equal(s.decode(), load_audio(u.audio)) for s, u in zip(samples, clips))
    with pytest.raises(DatasetError, match="no split 'validation'"):
        list(DatasetSource(DatasetSpec.parse(f"{tmp_path / 'disk'}:x:validation")).samples())


def test_bad_sets_are_named(leaderboard_copy, tmp_path):
    with pytest.raises(DatasetError, match=f"dataset {leaderboard_copy}:nope:test"):
        list(DatasetSource(DatasetSpec.parse(f"{leaderboard_copy}:nope:test")).samples())
    no_text = datasets.Dataset.from_dict({"audio": [{"bytes": b"x", "path": "x.wav"}], "words": ["a"]})
    no_text.save_to_disk(str(tmp_path / "no_text"))
    with pytest.raises(DatasetError, match="no reference column .* it has audio, words"):
        list(DatasetSource(DatasetSpec.parse(str(tmp_path / "no_text"))).samples())


# --- live: the preset end to end, and resume -----------------------------------------------------------------


def test_leaderboard_preset_end_to_end_and_resume(server, reference, leaderboard_copy, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["bench", "--url", server.grpc_url, "--dataset", "leaderboard", "--leaderboard-data", str(leaderboard_copy),
            "--concurrency", "2", "--warmup", "1", "--max-new-tokens", str(MAX_NEW), "--window", "1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "model card WER %" in capsys.readouterr().out
    summary = json.loads((out / "report.json").read_text())
    (level,) = summary["levels"]
    rows = level["sets"]
    assert [r["name"] for r in rows] == [s.name for s in SETS]
    assert [r["published_wer_percent"] for r in rows] == [s.published_wer for s in SETS]
    assert [(r["samples"], r["done"], r["failed"]) for r in rows] == [(2, 2, 0)] * 8
    assert [r["skipped_references"] for r in rows] == [1 if s.config in EMPTY_REFERENCES else 0 for s in SETS]
    assert level["mean_wer_percent"] == round(sum(r["wer_percent"] for r in rows) / 8, 2)
    assert level["rtfx"] == round(sum(r["timed_audio_seconds"] for r in rows) / sum(r["wall_seconds"] for r in rows), 2)
    assert summary["published"]["mean_wer_percent"] == 5.63 and summary["method"]["concurrency"] == [2]
    assert "| **mean** |" in (out / "report.md").read_text()

    # every set's report: tokens equal the PyTorch reference on the same decoded audio; WER from the references
    by_audio = {}
    for u in librivox_utterances():
        (want,) = transcribe(reference, [load_audio(u.audio)], max_new_tokens=MAX_NEW)
        by_audio[u.audio.stem] = want.token_ids
    for s in SETS:
        folder = out / DatasetSpec.parse(f"{leaderboard_copy}:{s.config}:{s.split}").slug
        report = json.loads((folder / "report.json").read_text())
        (p,) = report["passes"]
        assert [u["token_ids"] for u in p["utterances"]] == [by_audio[u["audio"].rsplit("/", 1)[1]] for u in p["utterances"]]
        assert p["triton"]["decoder"]["inference_count"] == 2  # the timed pass only
        assert report["dataset"]["audio_seconds"] == pytest.approx(sum(u["audio_seconds"] for u in p["utterances"]), abs=1e-3)
        assert not (folder / "partial.jsonl").exists()  # nothing failed: the report holds it all

    # cut short in SPGISpeech after its first sample: that set's report gone, its partial file holds one row
    spgi = out / DatasetSpec.parse(f"{leaderboard_copy}:spgispeech:test").slug
    report = json.loads((spgi / "report.json").read_text())
    first = {"concurrency": 2, **{k: v for k, v in report["passes"][0]["utterances"][0].items()
                                  if k in ("index", "audio", "status", "hypothesis", "token_ids", "audio_seconds",
                                           "latency_seconds", "endpoint", "error", "error_kind", "segments")}}  # fmt: skip
    (spgi / "partial.jsonl").write_text(json.dumps(report["dataset"]["fingerprint"]) + "\n" + json.dumps(first) + "\n")
    (spgi / "report.json").unlink()
    assert main(argv) == 0
    rows = json.loads((out / "report.json").read_text())["levels"][0]["sets"]
    assert [r["reused"] for r in rows] == [s.config != "spgispeech" for s in SETS]
    resumed = json.loads((spgi / "report.json").read_text())["passes"][0]
    assert (resumed["resumed"], resumed["sent"], resumed["done"]) == (1, 1, 2)
    assert resumed["triton"]["decoder"]["inference_count"] == 1  # only the sample not done before was sent
    assert not (spgi / "partial.jsonl").exists()

    # a partial file whose rows belong to other samples is refused, naming the file
    shutil.rmtree(spgi)
    spgi.mkdir()
    (spgi / "partial.jsonl").write_text(json.dumps(report["dataset"]["fingerprint"]) + "\n"
                                        + json.dumps({**first, "audio": "elsewhere/x"}) + "\n")  # fmt: skip
    assert main(argv) == 2
    assert "sample 0 was elsewhere/x" in capsys.readouterr().err
