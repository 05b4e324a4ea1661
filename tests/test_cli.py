"""The `canary-trt` command line: a light --help, transcribe (torch backend) and make-checkpoint."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from canary_trt.audio import SAMPLE_RATE, load_audio
from canary_trt.cli import main
from canary_trt.transcribe import transcribe

CONSOLE_SCRIPT = Path(sys.executable).parent / "canary-trt"
HEAVY = ("torch", "nemo", "transformers", "safetensors")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def cli_command() -> list[str]:
    return [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "canary_trt.cli"]


# --- light imports ------------------------------------------------------------------------------------


def test_help_via_console_script_is_fast():
    start = time.perf_counter()
    done = subprocess.run([*cli_command(), "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "usage: canary-trt" in done.stdout
    for command in ("transcribe", "make-checkpoint"):
        assert command in done.stdout
    assert elapsed < 5, f"canary-trt --help took {elapsed:.1f} s"


def test_help_via_module():
    done = subprocess.run(
        [sys.executable, "-m", "canary_trt.cli", "transcribe", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for option in ("--checkpoint", "--batch-size", "--max-new-tokens", "--json", "--dtype"):
        assert option in done.stdout


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert main(["transcribe", "x.wav"]) == 2  # the default torch backend needs --checkpoint
    assert "--backend torch needs --checkpoint DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    "statement",
    [
        "import canary_trt.cli",
        "import canary_trt.cli; exec('try:\\n canary_trt.cli.main([\"--help\"])\\nexcept SystemExit: pass')",
        "import canary_trt.client",
        "import canary_trt.audio",
    ],
    ids=["cli", "cli-help", "client", "audio"],
)
def test_light_modules_do_not_import_torch(statement):
    code = f"import sys\n{statement}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_loading_audio_does_not_import_torch(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros((44100, 2), np.float32), 44100)
    code = (
        "import sys\nfrom canary_trt.audio import load_audio\n"
        f"assert load_audio({str(path)!r}).shape == (16000,)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- transcribe ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wavs(clips, tmp_path_factory) -> dict[str, Path]:
    """Two LibriVox clips as float wav files (decoding gives the fixture arrays back bit for bit), and a
    44.1 kHz stereo copy of one."""
    out = tmp_path_factory.mktemp("wavs")
    paths = {}
    for name in ("0870", "1s"):
        paths[name] = out / f"{name}.wav"
        sf.write(paths[name], clips[name], SAMPLE_RATE, subtype="FLOAT")
    import soxr

    up = soxr.resample(clips["0880"], SAMPLE_RATE, 44100, quality="VHQ")
    paths["stereo44k"] = out / "stereo44k.wav"
    sf.write(paths["stereo44k"], np.stack([up, 0.5 * up], axis=1), 44100, subtype="FLOAT")
    return paths


def transcribe_json(capsys, checkpoint, paths, *extra) -> list[dict]:
    argv = ["transcribe", "--checkpoint", str(checkpoint), "--json", "--max-new-tokens", "8", *extra]
    code = main([*argv, *map(str, paths)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_transcribe_json_matches_reference(capsys, tiny_checkpoint, reference, clips, wavs):
    paths = [wavs["0870"], wavs["1s"]]
    rows = transcribe_json(capsys, tiny_checkpoint.path, paths)
    assert isinstance(rows, list) and len(rows) == 2
    expected = transcribe(reference, [clips["0870"], clips["1s"]], max_new_tokens=8)
    for row, path, want, clip in zip(rows, paths, expected, [clips["0870"], clips["1s"]]):
        assert set(row) == {"audio", "text", "token_ids", "audio_seconds"}
        assert row["audio"] == str(path)
        assert row["token_ids"] == want.token_ids
        assert 1 <= len(row["token_ids"]) <= 8
        assert row["text"] == want.text
        assert row["audio_seconds"] == pytest.approx(len(clip) / SAMPLE_RATE, abs=1e-3)
    assert rows[1]["audio_seconds"] == 1.0


def test_transcribe_accepts_44k_stereo(capsys, tiny_checkpoint, reference, clips, wavs):
    rows = transcribe_json(capsys, tiny_checkpoint.path, [wavs["stereo44k"]])
    assert len(rows) == 1
    assert rows[0]["audio"] == str(wavs["stereo44k"])
    assert rows[0]["audio_seconds"] == pytest.approx(len(clips["0880"]) / SAMPLE_RATE, abs=2e-3)
    (want,) = transcribe(reference, [load_audio(wavs["stereo44k"])], max_new_tokens=8)
    assert rows[0]["token_ids"] == want.token_ids
    assert 1 <= len(want.token_ids) <= 8


@pytest.mark.slow  # the PyTorch reference
def test_batch_size_does_not_change_results(capsys, tiny_checkpoint, wavs):
    paths = [wavs["0870"], wavs["1s"], wavs["stereo44k"]]
    one = transcribe_json(capsys, tiny_checkpoint.path, paths, "--batch-size", "1")
    two = transcribe_json(capsys, tiny_checkpoint.path, paths, "--batch-size", "2")
    assert one == two
    assert [row["audio"] for row in one] == list(map(str, paths))


def test_transcribe_plain_text_output(capsys, tiny_checkpoint, wavs):
    argv = ["transcribe", "--checkpoint", str(tiny_checkpoint.path), "--max-new-tokens", "8", str(wavs["1s"])]
    assert main(argv) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 1 and rows[0].startswith(f"{wavs['1s']}\t")


# --- clear errors -------------------------------------------------------------------------------------


def run_error(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.startswith("canary-trt transcribe: error: ")
    return captured.err


def test_missing_checkpoint_dir(capsys, tmp_path, wavs):
    missing = tmp_path / "no-such-checkpoint"
    err = run_error(capsys, ["transcribe", "--checkpoint", str(missing), str(wavs["1s"])])
    assert str(missing) in err and "does not exist" in err


def test_missing_audio_file(capsys, tiny_checkpoint, tmp_path):
    missing = tmp_path / "missing.wav"
    err = run_error(capsys, ["transcribe", "--checkpoint", str(tiny_checkpoint.path), str(missing)])
    assert str(missing) in err


def test_undecodable_audio_file(capsys, tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    err = run_error(capsys, ["transcribe", "--checkpoint", str(tiny_checkpoint.path), str(bad)])
    assert str(bad) in err and "decode" in err


@pytest.mark.parametrize("option", ["--batch-size", "--max-new-tokens"])
def test_non_positive_sizes(capsys, tiny_checkpoint, wavs, option):
    err = run_error(capsys, ["transcribe", "--checkpoint", str(tiny_checkpoint.path), option, "0", str(wavs["1s"])])
    assert option in err


def test_wrong_tensor_shape_is_named(capsys, tiny_checkpoint, tmp_path, wavs):
    import torch
    from safetensors.torch import load_file, save_file

    key = "perception.proj.bias"
    expected = tiny_checkpoint.expected_shapes()[key]
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint.path, broken)
    tensors = load_file(broken / "model.safetensors")
    assert tuple(tensors[key].shape) == expected
    tensors[key] = torch.zeros(expected[0] + 3, dtype=torch.bfloat16)
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})

    err = run_error(capsys, ["transcribe", "--checkpoint", str(broken), str(wavs["1s"])])
    assert key in err
    assert str((expected[0] + 3,)) in err and str(expected) in err
    assert "model.safetensors" in err


# --- make-checkpoint ----------------------------------------------------------------------------------


def test_make_checkpoint(capsys, tmp_path, tiny_checkpoint):
    from safetensors import safe_open

    from canary_trt.checkpoint import Checkpoint
    from canary_trt.tokenizer import eos_id, load_tokenizer

    out = tmp_path / "ckpt"
    assert main(["make-checkpoint", "--size", "tiny", "--out", str(out), "--seed", "1"]) == 0
    assert "wrote random tiny checkpoint" in capsys.readouterr().out

    config = json.loads((out / "config.json").read_text())
    assert (out / "model.safetensors").is_file()
    llm_dir = out / config["pretrained_llm"]
    assert llm_dir.is_dir()
    # What transformers needs offline (the HF repo's vocab.json/merges.txt are folded into tokenizer.json).
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (llm_dir / name).is_file(), name
    assert eos_id(load_tokenizer(llm_dir)) == 151645

    ckpt = Checkpoint.open(out)
    assert ckpt.llm_path == llm_dir
    with safe_open(ckpt.weights_file, framework="pt") as new, safe_open(tiny_checkpoint.weights_file, framework="pt") as old:
        assert set(new.keys()) == set(old.keys()) == set(ckpt.expected_shapes())
        key = "perception.proj.weight"
        assert not new.get_tensor(key).equal(old.get_tensor(key))  # seed 1 differs from the fixture's seed 0
        frontend = "perception.preprocessor.featurizer.fb"
        assert new.get_tensor(frontend).equal(old.get_tensor(frontend))  # computed, not random
