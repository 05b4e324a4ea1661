"""Fill the model_repository/ templates into BUILD/model_repository: the one tool that writes Triton
configs (in the spirit of tensorrtllm_backend's fill_template, but strict: an unfilled `${name}` is an
error here, not a broken `data_type` at load time).

The decoder template (cpu/decoder, gpu/decoder) is filled once per decoder the build has: `decoder` (ASR, LoRA
merged, audio in its prompt table, one response per request) and, in a build exported with --llm-mode,
`llm_decoder` (the base LLM: text only, decoupled, streaming). The other LLM-mode models are skipped otherwise."""

from __future__ import annotations

import shutil
import string
import sys
from importlib import resources
from pathlib import Path

from ..contract import (CHAT_MODEL, CLIPS_PER_REQUEST, LLM_DECODER, MAX_BUFFERED_SECONDS, MAX_LONG_AUDIO_SECONDS,
                        MAX_STREAMS, MODEL_REPOSITORY, STREAM_IDLE_S, Budgets)
from ..longform import served_options

LAYERS = {"cpu": ("common", "cpu"), "gpu": ("common", "gpu")}
# Pieces shared by several templates, each filled in as one ${name} (decoder_io: the decoder's tensors in both
# flavours; queue_policy: every dynamic batcher's bounded queue).
DECODER_IO = "common/decoder_io.pbtxt"
QUEUE_POLICY = "common/queue_policy.pbtxt"
# The decoders' inputs beyond decoder_io, each filled in as ${decoder_extra_io}: the ASR decoder's prompt table
# (the audio rows); llm_decoder's `streaming` flag (its engine has no prompt table, so Triton refuses one by name).
PROMPT_TABLE_IO = "common/prompt_table_io.pbtxt"
STREAMING_IO = "common/streaming_io.pbtxt"
DECODER_TEMPLATE = "decoder"
# The models filled from it: name -> (decoupled, the CPU model's `mode` parameter, its extra inputs, the manifest
# key of its GPU engine). llm_decoder is decoupled so that answers stream (serving/decoder.py, gpu/decoder).
DECODERS = {"decoder": (False, "asr", PROMPT_TABLE_IO, "llm_engine"),
            LLM_DECODER: (True, "llm", STREAMING_IO, "llm_decoder_engine")}  # fmt: skip
# Written only into a build exported with --llm-mode (its manifest has "llm_mode"): the base LLM and the chat
# BLS model that calls it (serving/chat.py, template common/canary_qwen_chat).
LLM_MODE_MODELS = (LLM_DECODER, CHAT_MODEL)
# The models before and after the decoder (encoder, adapter, detokenizer) batch what arrives together. GPU: a
# short wait gathers concurrent requests into one TensorRT run. CPU: none, as batching buys nothing there (the
# encoder runs each clip on its own, encoding.py; the adapter and detokenizer take milliseconds), and a 20-ms
# wait before each model cost 15% of served RTFx (benchmarks/README.md). The decoders wait for nothing
# (DECODER_QUEUE_DELAY_US): both flavours batch in flight, a request joins the running batch at the next step
# (CPU: inflight.py; GPU: the tensorrtllm backend's executor).
QUEUE_DELAY_US = {"cpu": 0, "gpu": 1_000}
DECODER_QUEUE_DELAY_US = 0
CPU_MAX_BATCH = 32
# ONNX Runtime intra-op threads of the CPU encoder and decoders (0: its default, one per physical core); the two
# run in separate processes on the same cores.
CPU_THREADS = {"encoder_threads": 0, "decoder_threads": 0}
# Bounded queues (every model's dynamic batcher; the ensemble has none): requests beyond max_queue_size
# waiting, or waiting longer than the timeout, are rejected with an explicit error. CPU: two full decoder
# batches may wait, and a few minutes of waiting is the most a CPU client should see. GPU: in-flight
# batching drains far faster; a deeper queue, a shorter wait.
MAX_QUEUE_SIZE = {"cpu": 64, "gpu": 1024}
QUEUE_TIMEOUT_US = {"cpu": 300_000_000, "gpu": 120_000_000}
# The GPU decoder (the tensorrtllm backend, model_repository/gpu/decoder): CUDA graphs for generation-only
# steps, an LRU of this many captured batch shapes: on by default, overridable for an on/off comparison.
GPU_DECODER_CUDA_GRAPHS = True
GPU_DECODER_CUDA_GRAPH_CACHE_SIZE = 64
# audio_check's length buckets. GPU: the TensorRT encoder batches only equal shapes; 2 s buckets waste at
# most 2 s of compute per clip (1 s on average, ~10% on LibriSpeech-length clips) and give 20 shapes up to
# 40 s, so a few hundred requests in flight meet in batches. CPU: the python encoder pads each batch itself.
BUCKET_SECONDS = {"cpu": 0.0, "gpu": 2.0}
# The prompt table's type, from the adapter to the decoder. GPU: the TensorRT-LLM engine's own dtype (FP16,
# export/presets.py LLM_DTYPE). CPU: the audio embeddings' FP32 unchanged, so that the fp32 build decodes
# exactly what the reference decodes (rounding the table to FP16 can flip a near-tie).
PROMPT_TABLE_TYPE = {"cpu": "TYPE_FP32", "gpu": "TYPE_FP16"}
# canary_qwen_stream's Triton sequence slots per stream it may hold open: a refused START or a vanished client
# keeps its slot until the idle time, and a START finding no free slot would wait in Triton's backlog instead of
# being refused by name; with 8, seven times max_streams such sequences fit within one idle time.
STREAM_SLOTS_PER_STREAM = 8


def templates() -> Path:
    return Path(str(resources.files("canary_trt") / "model_repository"))


def values_for(manifest: dict, build: Path, overrides: dict | None = None) -> dict[str, str]:
    """Every placeholder's value, from the build manifest; `overrides` replace any of them (e.g. a tiny
    max_queue_size for an overload test)."""
    flavour = manifest["target"]
    budgets = Budgets.from_manifest(manifest)
    values = {
        "build_dir": str(build.resolve()),
        "hidden_size": manifest["hidden_size"],
        "queue_delay_us": QUEUE_DELAY_US[flavour],
        "decoder_queue_delay_us": DECODER_QUEUE_DELAY_US,
        "max_queue_size": MAX_QUEUE_SIZE[flavour],
        "queue_timeout_us": QUEUE_TIMEOUT_US[flavour],
        "max_audio_seconds": budgets.max_audio_seconds,
        "max_long_audio_seconds": MAX_LONG_AUDIO_SECONDS,
        "max_streams": MAX_STREAMS,
        "stream_idle_s": STREAM_IDLE_S,
        "max_buffered_seconds": MAX_BUFFERED_SECONDS,
        "segmenter_options": "\n".join(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value
                                       in served_options.to_parameters(served_options.for_build(budgets)).items()),
        "clips_per_request": CLIPS_PER_REQUEST,
        "bucket_seconds": BUCKET_SECONDS[flavour],
        "prompt_table_type": PROMPT_TABLE_TYPE[flavour],
        # CPU: the python stub runs this venv's packages. GPU: the container's own Python (install the
        # package there), so no environment parameter at all.
        "python_env": "" if flavour == "gpu" else
        f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{sys.prefix}" }} }}',
        "decoder_io": (templates() / DECODER_IO).read_text(encoding="utf-8"),
    }  # fmt: skip
    if flavour == "cpu":
        values.update(max_batch_size=CPU_MAX_BATCH, encoder_max_batch_size=CPU_MAX_BATCH, **CPU_THREADS)
    else:
        values.update(max_batch_size=manifest["max_batch_size"], encoder_max_batch_size=manifest["encoder_max_batch_size"],
                      kv_cache_free_gpu_mem_fraction=manifest["kv_cache_free_gpu_mem_fraction"],
                      decoder_cuda_graph_mode=str(GPU_DECODER_CUDA_GRAPHS).lower(),
                      decoder_cuda_graph_cache_size=GPU_DECODER_CUDA_GRAPH_CACHE_SIZE)  # fmt: skip
    unknown = set(overrides or {}) - set(values)
    if unknown:
        raise ValueError(f"no such template value: {', '.join(sorted(unknown))}")
    values.update(overrides or {})
    values = {k: str(v) for k, v in values.items()}
    # filled last, so that an override (a tiny max_queue_size for an overload test, a short stream_idle_s)
    # reaches them too
    values["queue_policy"] = fill((templates() / QUEUE_POLICY).read_text(encoding="utf-8"), values, templates() / QUEUE_POLICY)
    values["stream_idle_us"] = str(round(float(values["stream_idle_s"]) * 1_000_000))
    values["stream_sequence_slots"] = str(STREAM_SLOTS_PER_STREAM * int(values["max_streams"]))
    return values


def decoder_values(manifest: dict, build: Path, shared: dict[str, str]) -> dict[str, dict[str, str]]:
    """The decoder template's own values for each decoder model of this build (GPU: each its own engine);
    its extra inputs are filled from `shared` (values_for: the prompt table's type)."""
    names = ["decoder"] + ([LLM_DECODER] if "llm_mode" in manifest else [])
    values = {}
    for name in names:
        decoupled, mode, extra_io, engine = DECODERS[name]
        extra = fill((templates() / extra_io).read_text(encoding="utf-8"), shared, templates() / extra_io)
        values[name] = {"model_name": name, "decoupled": str(decoupled).lower(), "decoder_mode": mode,
                        "decoder_extra_io": extra}  # fmt: skip
        if manifest["target"] == "gpu":
            values[name]["llm_engine_dir"] = str((build / manifest[engine]).resolve())
    return values


def write_model_repository(build: Path, manifest: dict, overrides: dict | None = None, out: Path | None = None) -> Path:
    """Fill the templates into `out` (default BUILD/model_repository), replaced if it exists."""
    flavour = manifest["target"]
    values = values_for(manifest, build, overrides)
    decoders = decoder_values(manifest, build, values)
    out = Path(out) if out is not None else build / MODEL_REPOSITORY
    if out.exists():
        shutil.rmtree(out)
    for layer in LAYERS[flavour]:
        for model in sorted(p for p in (templates() / layer).iterdir() if (p / "config.pbtxt").is_file()):
            if model.name in LLM_MODE_MODELS and "llm_mode" not in manifest:
                continue
            for name, own in (decoders.items() if model.name == DECODER_TEMPLATE else [(model.name, {})]):
                _write_model(model, out / name, {**values, **own})
    if flavour == "gpu":  # the engine is built beside the repository; link it where tensorrt_plan looks
        (out / "encoder" / "1" / "model.plan").symlink_to(Path("..", "..", "..", manifest["encoder_engine"]))
    return out


def _write_model(template: Path, target: Path, values: dict[str, str]) -> None:
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = target / "config.pbtxt"
    config.write_text(fill(config.read_text(encoding="utf-8"), values, config), encoding="utf-8")
    (target / "1").mkdir(exist_ok=True)  # Triton needs a version directory, ensembles too


def fill(text: str, values: dict[str, str], source: Path) -> str:
    try:
        return string.Template(text).substitute(values)
    except KeyError as e:
        raise ValueError(f"{source}: no value for placeholder ${{{e.args[0]}}}") from None
