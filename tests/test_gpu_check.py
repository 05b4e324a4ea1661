"""`canary-trt gpu-check` without a GPU: the prepare stage for real (random tiny checkpoint, both builds, ONNX
Runtime references), the comparison stage against the CPU flavour served by the bundled tritonserver (it
speaks the GPU flavour's tensors), failures named (a tampered reference, no TensorRT, a server that cannot
start, a failing engines stage), the version report with nothing installed, and deploy/gpu-check.sh's
docker invocations through a stand-in `docker`."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from canary_trt.cli import main
from canary_trt.contract import audio_rows
from canary_trt.gpu_check import checks, versions
from canary_trt.gpu_check.prepare import prepare
from canary_trt.gpu_check.references import CHECK_FILE, DATA_DIR, TokenReference, read_references
from canary_trt.gpu_check.run import build_engines, serve_and_compare

pytestmark = pytest.mark.slow  # the prepare stage exports real builds; the checks run against a live server

MAX_NEW = 12
SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "gpu-check.sh"


@pytest.fixture(scope="module")
def check_dir(tmp_path_factory):
    """`gpu-check prepare` for real, once for the module (about a minute on 2 cores)."""
    out = tmp_path_factory.mktemp("gpu-check")
    prepare(out, preset="h100", max_new_tokens=MAX_NEW, log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def served(check_dir):
    """DIR/cpu on the bundled tritonserver: the same `encoder` and `canary_qwen` tensors as the GPU flavour."""
    from canary_trt.server import TritonServer

    with TritonServer(check_dir / "cpu" / "model_repository") as running:
        yield running


def _run(capsys, *args) -> tuple[int, str]:
    code = main(["gpu-check", "run", *map(str, args)])
    return code, capsys.readouterr().out


def _copy_references(check_dir: Path, to: Path) -> Path:
    """check.json and check/ alone: all `run --url` reads."""
    to.mkdir()
    shutil.copy(check_dir / CHECK_FILE, to / CHECK_FILE)
    shutil.copytree(check_dir / DATA_DIR, to / DATA_DIR)
    return to


def test_prepare_writes_builds_and_references(check_dir):
    refs = read_references(check_dir)
    assert refs.preset == "h100" and refs.max_new_tokens == MAX_NEW
    gpu = json.loads((check_dir / "gpu" / "export.json").read_text())
    assert gpu["target"] == "gpu" and gpu["preset"] == "h100"
    assert (check_dir / "gpu" / "encoder.onnx").is_file() and (check_dir / "gpu" / "hf_llm").is_dir()
    assert json.loads((check_dir / "cpu" / "export.json").read_text())["precision"] == "fp32"
    # LibriVox is installed here (conftest requires it): real utterances, stored as what ORT was fed
    assert [t.name for t in refs.transcribe] == ["0870", "0880", "0890"]
    for t in refs.transcribe:
        assert 1 <= len(t.token_ids) <= MAX_NEW and len(t.margins) in (len(t.token_ids), len(t.token_ids) + 1)
        assert all(m >= 0 for m in t.margins)
        assert refs.load(t.audio).dtype == np.float32
    assert [(e.seconds, e.rows) for e in refs.encoder] == [(s, audio_rows(round(s * 16000))) for s in (1, 20, 40)]
    for e in refs.encoder:
        assert refs.load(e.embeddings).shape == (e.rows, gpu["hidden_size"])


def test_references_are_the_onnx_pipeline(check_dir):
    """The recorded tokens are what the CPU build decodes from the FP32 prompt table (as the CPU flavour serves
    it), and the encoder references are its encoder's output."""
    from canary_trt.onnx_pipeline import OnnxPipeline
    from canary_trt.tokenizer import asr_prompt_ids

    refs = read_references(check_dir)
    pipeline = OnnxPipeline(check_dir / "cpu")
    first, short = refs.transcribe[0], refs.encoder[0]
    (embeddings,) = pipeline.embed_audio([refs.load(first.audio)])
    (tokens,) = pipeline.generate([embeddings], asr_prompt_ids(pipeline.tokenizer), MAX_NEW)
    assert tokens == first.token_ids
    np.testing.assert_array_equal(pipeline.embed_audio([refs.load(short.audio)])[0], refs.load(short.embeddings))


def test_synthetic_speech_when_librivox_is_absent(tmp_path):
    """The CPU image has no LibriVox: seeded speech-like clips instead, within the servers' audio rules."""
    from canary_trt.contract import MAX_AUDIO_SECONDS, MIN_SAMPLES
    from canary_trt.gpu_check.clips import ENCODER_SECONDS, SYNTHETIC_SECONDS, encoder_clips, transcribe_clips

    clips = transcribe_clips(tmp_path) + encoder_clips(tmp_path)  # an empty folder: no LibriVox
    assert [c.seconds for c in clips] == [*SYNTHETIC_SECONDS, *ENCODER_SECONDS]
    assert all(c.source.startswith("synthetic speech, seed ") for c in clips)
    for clip in clips:
        assert clip.samples.dtype == np.float32 and np.isfinite(clip.samples).all()
        assert 0 < np.abs(clip.samples).max() <= 0.5 and MIN_SAMPLES <= len(clip.samples) <= MAX_AUDIO_SECONDS * 16000
    again = transcribe_clips(tmp_path)[0].samples
    np.testing.assert_array_equal(again, clips[0].samples)  # deterministic per seed
    assert not np.array_equal(clips[0].samples[:16000], clips[1].samples[:16000])


def test_run_against_the_cpu_flavour_passes(check_dir, served, capsys):
    code, out = _run(capsys, check_dir, "--url", served.http_url)
    assert code == 0, out
    assert out.rstrip().splitlines()[-1] == "gpu-check: PASS (7 checks)"
    assert "decoder backend python (ONNX Runtime fp32, as the reference): tokens must be identical" in out
    for name in ("0870", "0880", "0890"):
        assert f"ok   canary_qwen {name}" in out
    for name in ("encoder 1 s ", "encoder 20 s", "encoder 40 s", "encoder 1 s padded to 20 s"):
        assert f"ok   {name}" in out
    assert "cosine 1.000000" in out and "FAIL" not in out


def test_a_tampered_reference_fails_naming_the_clip(check_dir, served, tmp_path, capsys):
    tampered = _copy_references(check_dir, tmp_path / "tokens")
    body = json.loads((tampered / CHECK_FILE).read_text())
    clip = body["transcribe"][1]
    clip["token_ids"][0] += 1
    (tampered / CHECK_FILE).write_text(json.dumps(body))
    code, out = _run(capsys, tampered, "--url", served.http_url)
    assert code == 1
    last = out.rstrip().splitlines()[-1]
    assert last.startswith(f"gpu-check: FAIL: canary_qwen {clip['name']}: token 0 differs: server "), last
    assert f"ONNX Runtime {clip['token_ids'][0]}" in last

    broken = _copy_references(check_dir, tmp_path / "encoder")
    embeddings = broken / DATA_DIR / "encoder-40s-embeddings.npy"
    np.save(embeddings, np.load(embeddings)[::-1].copy())  # rows reversed: the right values, the wrong order
    code, out = _run(capsys, broken, "--url", served.http_url)
    assert code == 1
    assert "gpu-check: FAIL: encoder 40 s: cosine " in out and "< 0.999" in out
    assert "ok   canary_qwen 0880" in out  # the other checks still ran and are reported


def test_fp16_policy_accepts_only_a_near_tie_divergence():
    ref = TokenReference("clip", "test", 1.0, "a.npy", [5, 6, 7, 8], [0.5, 0.5, 0.01, 0.5, 0.2], "text")
    fp16 = checks.TokenPolicy(exact=False, reason="decoder backend tensorrtllm (FP16)")
    exact = checks.TokenPolicy(exact=True, reason="decoder backend python")
    assert checks.compare_tokens("c", [5, 6, 7, 8], ref, exact).ok
    near_tie = checks.compare_tokens("c", [5, 6, 9, 9], ref, fp16)
    assert near_tie.ok and "first divergence at token 2 of 4" in near_tie.detail and "near-tie" in near_tie.detail
    assert not checks.compare_tokens("c", [5, 6, 9, 9], ref, exact).ok
    clear = checks.compare_tokens("c", [5, 9, 7, 8], ref, fp16)
    assert not clear.ok and clear.message == "c: token 1 differs: server 9, ONNX Runtime 6 (its top-2 gap 0.5 >= 0.03, no near-tie)"
    ended = checks.compare_tokens("c", [5, 6, 7], ref, fp16)  # the server stopped where the reference went on
    assert not ended.ok and "server <|im_end|>, ONNX Runtime 8" in ended.failure


def test_embedding_comparison_names_each_threshold():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 16))
    assert checks.compare_embeddings("e", ref + 1e-4, ref).ok
    assert "rows x width [49, 16] != reference [50, 16]" in checks.compare_embeddings("e", ref[:49], ref).failure
    nan = ref.copy()
    nan[3, 3] = np.nan
    assert checks.compare_embeddings("e", nan, ref).failure == "NaN/Inf in the output"
    one_row = ref.copy()
    one_row[7] = -one_row[7]  # 1 row of 50 wrong: the whole output's cosine is about 0.96
    failure = checks.compare_embeddings("e", one_row, ref).failure
    assert failure.startswith("cosine 0.9") and failure.endswith(f"< {checks.ENCODER_MIN_COSINE}")
    many = rng.standard_normal((5000, 16))
    one_of_many = many.copy()
    one_of_many[7] = -one_of_many[7]  # 1 row of 5000: the whole passes (0.9996), the row does not
    assert checks.compare_embeddings("e", one_of_many, many).failure == f"row 7 cosine -1 < {checks.ENCODER_MIN_ROW_COSINE}"
    wide = rng.standard_normal((20, 4096))
    spike = wide.copy()
    spike[2, 2] += 0.5 * np.abs(wide).max()  # one value far off: both cosines stay high
    failure = checks.compare_embeddings("e", spike, wide).failure
    assert failure.startswith("max abs diff") and "(0.05 x the reference's largest |value|)" in failure


def test_run_without_tensorrt_fails_first_naming_it(check_dir, capsys):
    code, out = _run(capsys, check_dir)
    assert code == 1
    lines = out.rstrip().splitlines()
    assert lines[0] == "== versions" and any(line.strip().startswith("python ") for line in lines[1:8])
    assert lines[-1] == "gpu-check: FAIL: tensorrt: not importable: ModuleNotFoundError: No module named 'tensorrt'"
    assert not (check_dir / "logs").exists()  # nothing was started


def test_version_report_with_tools_missing(tmp_path):
    report = versions.collect(env={"PATH": str(tmp_path)})
    assert all(path is None for path in report.tools.values())
    assert report.get("GPU").version is None and "nvidia-smi not found" in report.get("GPU").detail
    assert report.get("tensorrt").version is None and "No module named 'tensorrt'" in report.get("tensorrt").detail
    assert report.get("python").version
    text = "\n".join(report.lines())
    assert "nvidia-smi MISSING; trtexec MISSING" in text and "CUDA_VERSION not set" in text

    smi = tmp_path / "nvidia-smi"  # a driver that answers: its CSV is reported as it is
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 570.86.15, 81559 MiB, 9.0'\n")
    smi.chmod(0o755)
    report = versions.collect(env={"PATH": str(tmp_path), "CUDA_VERSION": "13.0.1"})
    assert report.get("GPU").version == "NVIDIA H100 80GB HBM3, 570.86.15, 81559 MiB, 9.0"
    assert report.get("CUDA").version == "13.0.1" and report.tools["nvidia-smi"] == str(smi)


def test_server_that_cannot_start_is_named(check_dir, tmp_path):
    fake = tmp_path / "tritonserver"
    fake.write_text("#!/bin/sh\necho \"args: $*\"\necho 'error: creating server: Internal - failed to load all models'\nexit 1\n")
    fake.chmod(0o755)
    refs = read_references(check_dir)
    (failed,) = serve_and_compare(refs, str(fake), None, 30, log=lambda line: None)
    assert not failed.ok and failed.message.startswith("server: did not become ready: tritonserver exited during start-up (exit code 1)")
    assert "error: creating server: Internal - failed to load all models" in failed.failure
    log = (check_dir / "logs" / "tritonserver.log").read_text()
    for arg in ("--model-repository=" + str(check_dir / "gpu" / "model_repository"), "--http-address=127.0.0.1",
                "--grpc-address=127.0.0.1", "--model-control-mode=none", "shm-region-prefix-name=canary_trt_"):
        assert arg in log
    assert "--backend-directory" not in log  # the binary's own backends
    shutil.rmtree(check_dir / "logs")


def test_engines_stage_failure_is_named(check_dir):
    """The real `export --stage engines` in a child process, here without the GPU stack: its own error is named."""
    refs = read_references(check_dir)
    check = build_engines(refs, log=lambda line: None)
    assert not check.ok and check.message.startswith("engines stage: failed (exit code 2): canary-trt export: error:")
    assert "engines.log" in check.failure and (check_dir / "logs" / "engines.log").is_file()
    shutil.rmtree(check_dir / "logs")


def test_bad_input_is_refused_by_name(tmp_path, capsys):
    assert main(["gpu-check", "run", str(tmp_path)]) == 2
    assert f"{tmp_path / CHECK_FILE} not found: run `canary-trt gpu-check prepare --out {tmp_path}`" in capsys.readouterr().err
    assert main(["gpu-check", "prepare", "--out", str(tmp_path / "x"), "--preset", "gtx1080"]) == 2
    assert "unknown GPU preset 'gtx1080'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any work


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` that logs its arguments; `gpu-check run` exits 3, and stage 1 fails when FAIL_PREPARE is set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        '#!/bin/sh\necho "$*" >> "$DOCKER_LOG"\n'
        'case "$*" in *"gpu-check run"*) exit 3;; *"gpu-check prepare"*) [ -n "$FAIL_PREPARE" ] && exit 5;; esac\nexit 0\n'
    )
    (bin_dir / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(tmp_path / "docker.log")}
    return env, tmp_path / "docker.log"


def test_gpu_check_script_runs_both_stages_on_one_folder(fake_docker, tmp_path):
    env, log = fake_docker
    host = tmp_path / "host dir"  # a space: every path stays one argument
    done = subprocess.run([str(SCRIPT), "--dir", str(host), "--preset", "l40s", "--", "--skip-engines"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 3, done.stderr  # stage 2's status
    calls = log.read_text().splitlines()
    assert calls[:2] == ["image inspect canary-trt-cpu:0.1.0", "image inspect canary-trt-gpu:0.1.0"]
    prepare_call, run_call = calls[2:]
    mount = f"-v {host}:{host}"
    assert mount in prepare_call and mount in run_call
    assert "--gpus all" not in prepare_call and "--gpus all --shm-size=2g" in run_call
    assert prepare_call.endswith(f"canary-trt-cpu:0.1.0 canary-trt gpu-check prepare --out {host} --preset l40s")
    assert run_call.endswith(f"canary-trt-gpu:0.1.0 canary-trt gpu-check run {host} --skip-engines")
    assert f"--user {os.getuid()}:{os.getgid()}" in run_call and host.is_dir()

    log.unlink()
    done = subprocess.run([str(SCRIPT), "--dir", str(host)], env={**env, "FAIL_PREPARE": "1"}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 5 and "stage 1 (prepare, CPU image canary-trt-cpu:0.1.0) failed with exit status 5" in done.stderr
    assert not any("gpu-check run" in line for line in log.read_text().splitlines())

    done = subprocess.run([str(SCRIPT), "--preset"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--preset needs a value" in done.stderr
