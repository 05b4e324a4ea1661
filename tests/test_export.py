"""`canary-trt export`: the CPU build end to end, the GPU dry run for every preset, clear errors, and the
onnx backend of `canary-trt transcribe` token-exact with the PyTorch reference."""

import json
import shutil
import time

import pytest

from canary_trt.cli import main
from canary_trt.export.presets import PRESETS, get_preset
from canary_trt.export_info import read_export_info

CLIP_SETS = {"1s": ["1s"], "10s": ["10s"], "35s": ["35s"], "mixed batch": ["0880", "35s", "1s", "0870", "10s"]}


def test_cpu_build_contents(cpu_build):
    manifest = read_export_info(cpu_build)
    assert manifest["target"] == "cpu" and manifest["precision"] == "fp32" and manifest["decoder"] == "decoder.onnx"
    for name in ("encoder.onnx", "encoder.onnx.data", "decoder.onnx", "decoder.onnx.data", "embed_tokens.npy",
                 "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "model_repository/canary_qwen/config.pbtxt"):
        assert (cpu_build / name).is_file(), name
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in cpu_build.rglob("*") if p.is_file())  # readable by Triton


@pytest.mark.slow  # an export
def test_heavy_steps_apart_give_the_same_build(cpu_build, tiny_checkpoint, tmp_path):
    """isolate=True (what a full-size checkpoint gets): each heavy step in a spawned process; the same graphs."""
    import numpy as np
    import onnx

    from canary_trt.export.build import export

    export(tiny_checkpoint.path, tmp_path, target="cpu", isolate=True, log=lambda line: None)
    for name in ("encoder.onnx", "decoder.onnx"):
        apart, together = onnx.load(str(tmp_path / name)), onnx.load(str(cpu_build / name))
        assert [n.op_type for n in apart.graph.node] == [n.op_type for n in together.graph.node], name
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in together.graph.initializer}
        assert all(np.array_equal(onnx.numpy_helper.to_array(t), weights[t.name]) for t in apart.graph.initializer)
    assert np.array_equal(np.load(tmp_path / "embed_tokens.npy"), np.load(cpu_build / "embed_tokens.npy"))


def test_export_leaves_the_users_own_files_alone(tiny_checkpoint, tmp_path):
    """Only what the export writes is opened up for the serving user; a private file already there stays so."""
    import os

    from canary_trt.export.build import export

    private = tmp_path / "notes.txt"
    private.write_text("mine")
    private.chmod(0o600)
    os.utime(private, (time.time() - 3600,) * 2)
    export(tiny_checkpoint.path, tmp_path, target="cpu", dry_run=True, log=lambda line: None)
    assert private.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "export.json").stat().st_mode & 0o777 == 0o644


def _write_wavs(clips, names, tmp_path):
    import soundfile as sf

    paths = []
    for name in names:
        paths.append(tmp_path / f"{name}.wav")
        sf.write(paths[-1], clips[name], 16000, subtype="FLOAT")
    return [str(p) for p in paths]


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("case", CLIP_SETS)
def test_onnx_backend_is_token_exact_with_torch(case, capsys, cpu_build, tiny_checkpoint, reference, clips, tmp_path):
    wavs = _write_wavs(clips, CLIP_SETS[case], tmp_path)
    common = ["transcribe", "--json", "--max-new-tokens", "24", "--batch-size", "5", *wavs]
    onnx_rows = _json(capsys, [*common, "--backend", "onnx", "--build", str(cpu_build)])
    torch_rows = _json(capsys, [*common, "--backend", "torch", "--checkpoint", str(tiny_checkpoint.path)])
    assert onnx_rows == torch_rows


@pytest.mark.slow  # a full export
@pytest.mark.parametrize("precision, decoder", [("int8", "decoder_int8.onnx"), ("int4", "decoder_int4.onnx")])
def test_quantized_build_transcribes(precision, decoder, capsys, tiny_checkpoint, clips, tmp_path):
    build = tmp_path / precision
    assert main(["export", "--checkpoint", str(tiny_checkpoint.path), "--out", str(build), "--precision", precision]) == 0
    capsys.readouterr()
    manifest = read_export_info(build)
    assert manifest["precision"] == precision and manifest["decoder"] == decoder
    assert manifest["encoder"] == "encoder_int8.onnx"  # int4 too: 4 bit is the decoder's only
    assert all((build / name).is_file() for name in ("encoder.onnx", "encoder_int8.onnx", "decoder.onnx", decoder,
                                                     decoder + ".data"))  # fmt: skip
    rows = _json(capsys, ["transcribe", "--json", "--max-new-tokens", "8", "--backend", "onnx", "--build", str(build),
                          *_write_wavs(clips, ["0880", "1s"], tmp_path)])  # fmt: skip
    assert [len(r["token_ids"]) for r in rows] == [8, 8]


def test_int4_dry_run_plans_4_bit_decoder_weights(capsys, tiny_checkpoint, tmp_path):
    from canary_trt.export import quantize

    assert main(["export", "--checkpoint", str(tiny_checkpoint.path), "--out", str(tmp_path), "--precision", "int4",
                 "--dry-run"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "encoder int8 weights" in printed
    assert f"decoder int4 weights (MatMulNBits, 4 bit, block {quantize.BLOCK_SIZE[4]}" in printed
    assert {k: read_export_info(tmp_path)[k] for k in ("precision", "encoder", "decoder")} == {
        "precision": "int4", "encoder": "encoder_int8.onnx", "decoder": "decoder_int4.onnx"}  # fmt: skip


@pytest.mark.parametrize("preset", PRESETS)
def test_gpu_dry_run_prints_every_command(preset, capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "gpu"
    assert main(["export", "--checkpoint", str(tiny_checkpoint.path), "--out", str(out), "--target", "gpu",
                 "--preset", preset, "--dry-run"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    p = get_preset(preset)
    assert "-m canary_trt.export.tensorrt --onnx " + str(out / "encoder.onnx") in printed
    assert f"WAV min/opt/max [(1, 1600), ({p.opt_batch}, {round(p.opt_seconds * 16000)}), " \
           f"({p.encoder_max_batch}, {p.max_samples})]" in printed  # the engine profile  # fmt: skip
    assert f"--preset {preset} --precision fp16" in printed and "front end, LayerNorm, Softmax in FP32" in printed
    assert "-m canary_trt.export.trtllm --hf-dir " + str(out / "hf_llm") in printed
    assert f"--max_prompt_embedding_table_size {p.audio_rows * p.llm_max_batch}" in printed
    assert f"--max_seq_len {p.max_input_len + 128}" in printed
    assert "WAV f32 [B, samples]" in printed and "audio_embeddings f32 [B, T', 128]" in printed
    # a dry run writes only what is cheap and worth inspecting: no ONNX, no engines
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model_repository", "tokenizer"]


def test_cpu_dry_run_and_precisions(capsys, tiny_checkpoint, tmp_path):
    assert main(["export", "--checkpoint", str(tiny_checkpoint.path), "--out", str(tmp_path / "b"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "encoder ONNX" in printed and "decoder ONNX" in printed and "int8" not in printed
    assert main(["export", "--checkpoint", str(tiny_checkpoint.path), "--out", str(tmp_path / "b"), "--target", "gpu",
                 "--precision", "bf16", "--preset", "a100", "--dry-run"]) == 0  # fmt: skip
    assert "--precision bf16" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "gpu", "--preset", "rtx4090"], "unknown GPU preset 'rtx4090'; known presets: rtx5090, rtx-pro-6000"),
        (["--target", "gpu", "--preset", "a100", "--precision", "fp8"], "fp8 needs compute capability >= 8.9"),
        (["--target", "cpu", "--precision", "fp16"], "--precision 'fp16' is not available for --target cpu"),
        (["--target", "gpu", "--precision", "int4"],
         "--precision 'int4' is not available for --target gpu (int4 is a --target cpu option); choose one of fp16"),
        (["--target", "cpu", "--preset", "h100"], "--preset selects GPU shapes"),
    ],
)
def test_bad_options_are_clear_errors(extra, message, capsys, tiny_checkpoint, tmp_path):
    assert main(["export", "--checkpoint", str(tiny_checkpoint.path), "--out", str(tmp_path), "--dry-run", *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(capsys, tmp_path):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_gpu_build_without_tensorrt_fails_at_once(capsys, tiny_checkpoint, tmp_path):
    start = time.perf_counter()
    assert main(["export", "--checkpoint", str(tiny_checkpoint.path), "--out", str(tmp_path / "gpu"), "--target", "gpu"]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "Python module `tensorrt` not found" in err and "nvcr.io/nvidia/tritonserver:" in err
    assert not (tmp_path / "gpu").exists()


def test_onnx_backend_errors(capsys, clips, tmp_path, cpu_build):
    wav = _write_wavs(clips, ["1s"], tmp_path)
    assert main(["transcribe", "--backend", "onnx", *wav]) == 2
    assert "--backend onnx needs --build DIR" in capsys.readouterr().err
    assert main(["transcribe", "--backend", "onnx", "--build", str(tmp_path), *wav]) == 2
    assert "export.json not found: run `canary-trt export" in capsys.readouterr().err
    gpu_like = tmp_path / "gpu-build"
    shutil.copytree(cpu_build, gpu_like)
    (gpu_like / "export.json").write_text(json.dumps({**read_export_info(cpu_build), "target": "gpu"}))
    assert main(["transcribe", "--backend", "onnx", "--build", str(gpu_like), *wav]) == 2
    assert "is a gpu build" in capsys.readouterr().err
