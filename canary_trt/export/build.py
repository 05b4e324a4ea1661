"""`canary-trt export`: a build is a list of steps, run in order. --dry-run prints every step, command and
shape and runs only the cheap ones (tokenizer, manifest, model repository configs) for inspection.

BUILD/ after a CPU build: encoder.onnx, decoder.onnx (+ encoder_int8.onnx and decoder_int8.onnx or
decoder_int4.onnx with --precision int8 or int4: contract.CPU_GRAPHS),
embed_tokens.npy, tokenizer/, export.json (what the runtime needs to know) and model_repository/.
A GPU build has encoder.onnx -> encoder.plan (TensorRT Python API), hf_llm/ (the merged HF Qwen3 checkpoint),
trtllm_checkpoint/ and trtllm_engine/ instead of the decoder ONNX files.
`--llm-mode` adds the base LLM (LoRA off) as a second decoder, llm_decoder: llm_decoder.onnx (CPU; it shares
embed_tokens.npy) or hf_llm_base/ -> trtllm_llm_checkpoint/ -> trtllm_llm_engine/ (GPU), and export.json's
"llm_mode" budgets (contract.LlmBudgets).

A GPU build runs in two stages when one machine cannot hold both software stacks: `prepare` (the steps
that need PyTorch and NeMo: encoder ONNX, merged HF checkpoint, configs; any machine with
`canary-trt[full]`) then `engines` (TensorRT and TensorRT-LLM on the prepared folder, in the pinned
container, whose Python stack lacks NeMo). `all` runs both in one go.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from ..checkpoint import Checkpoint
from ..contract import (CPU_GRAPHS, DECODER_ONNX, EMBEDDINGS, ENCODER_INT8_ONNX, ENCODER_ONNX, ENCODER_PLAN, EXPORT_INFO,
                        HF_BASE_LLM_DIR, HF_LLM_DIR, LLM_DECODER_ONNX, MAX_NEW_TOKENS, MODEL_REPOSITORY, TOKENIZER_DIR,
                        TRTLLM_BASE_CHECKPOINT_DIR, TRTLLM_BASE_ENGINE_DIR, TRTLLM_CHECKPOINT_DIR, TRTLLM_ENGINE_DIR,
                        Budgets, LlmBudgets)
from ..export_info import read_export_info, write_export_info
from ..tokenizer import copy_tokenizer_files
from . import decoder_onnx, encoder_onnx
from ..errors import InvalidInput, MissingFile
from .repository import LLM_MODE_MODELS, write_model_repository

# --precision per target: int8 means 8-bit weights (CPU: encoder and decoder; GPU: the LLM, W8A16); int4 (CPU
# only) 4-bit decoder weights with int8's encoder. TensorRT-LLM has int4 weight-only too, but no GPU flow here
# builds or checks it.
PRECISIONS = {"cpu": ("fp32", "int8", "int4"), "gpu": ("fp16", "bf16", "fp8", "int8")}
CPU_DECODER_BITS = {"int8": 8, "int4": 4}  # MatMulNBits bits per quantized CPU precision
GPU_PRECISION = {  # --precision -> preset fields
    "fp16": {"encoder_precision": "fp16", "llm_quantization": "none"},
    "bf16": {"encoder_precision": "bf16", "llm_quantization": "none"},
    "fp8": {"encoder_precision": "fp16", "llm_quantization": "fp8"},
    "int8": {"encoder_precision": "fp16", "llm_quantization": "int8_wo"},
}
DEFAULT_PRESET = "h100"
STAGES = ("all", "prepare", "engines")
APART_BYTES = 2 * 10**9  # a checkpoint over this (the real one: 5.1 GB) exports each heavy step apart (run_apart)
MODELS = ("audio_check", "encoder", "adapter", "decoder", "detokenizer", "canary_qwen", "canary_qwen_long")


@dataclass
class Step:
    title: str
    detail: str  # shapes and sizes, for the dry run
    command: Callable[[], list[str]] | None = None  # an external tool; resolved late, once its inputs exist
    # Python; a heavy one is a functools.partial of a module-level function, so that it can run apart (export)
    action: Callable[[], object] | None = None
    cheap: bool = False  # writes only small files (configs): runs in a dry run too, so they can be inspected
    engine: bool = False  # a TensorRT / TensorRT-LLM step: the `engines` stage


def plan(checkpoint: Checkpoint, out: Path, target: str, precision: str | None, preset_name: str | None,
         max_new_tokens: int = MAX_NEW_TOKENS, calib_dataset: Path | None = None, llm_mode: bool = False) -> list[Step]:
    if target not in PRECISIONS:
        raise InvalidInput(f"unknown target {target!r}; choose cpu or gpu")
    precision = precision or PRECISIONS[target][0]
    if precision not in PRECISIONS[target]:
        elsewhere = "".join(f" ({precision} is a --target {t} option)" for t in PRECISIONS if precision in PRECISIONS[t])
        raise InvalidInput(f"--precision {precision!r} is not available for --target {target}{elsewhere}; "
                         f"choose one of {', '.join(PRECISIONS[target])}")  # fmt: skip
    if target == "cpu" and preset_name:
        raise InvalidInput("--preset selects GPU shapes; it does not apply to --target cpu")
    llm, hidden = checkpoint.llm_config, checkpoint.llm_config["hidden_size"]
    encoder_detail = f"WAV f32 [B, samples] + WAV_LENS i32 [B] -> audio_embeddings f32 [B, T', {hidden}] + audio_lengths i32 [B]"
    steps = [Step("encoder ONNX", encoder_detail, action=partial(encoder_onnx.export_encoder_onnx, checkpoint, out))]
    manifest = {"target": target, "precision": precision, "checkpoint": str(checkpoint.path),
                "vocab_size": llm["vocab_size"], "hidden_size": hidden, "encoder": ENCODER_ONNX,
                "tokenizer": TOKENIZER_DIR}  # fmt: skip
    if llm_mode:
        manifest["llm_mode"] = LlmBudgets().to_manifest()

    if target == "cpu":
        if calib_dataset is not None:
            raise InvalidInput("--calib-dataset calibrates the GPU build's FP8 LLM; it does not apply to --target cpu")
        manifest["budgets"] = Budgets(max_new_tokens=max_new_tokens).to_manifest()
        layers, kv_heads, head_dim = llm["num_hidden_layers"], llm["num_key_value_heads"], llm.get("head_dim") or hidden // llm["num_attention_heads"]
        graph = (f"inputs_embeds f32 [B, S, {hidden}] + attention_mask i64 [B, P+S] + position_ids i64 [B, S] + "
                 f"{layers} x past key/value f32 [B, {kv_heads}, P, {head_dim}] -> logits f32 [B, {llm['vocab_size']}] + present")  # fmt: skip
        steps.append(Step("decoder ONNX (Qwen3, LoRA merged, explicit KV cache) + embed_tokens.npy", graph,
                          action=partial(decoder_onnx.export_decoder_onnx, checkpoint, out)))  # fmt: skip
        manifest.update(decoder=DECODER_ONNX, embeddings=EMBEDDINGS)
        if llm_mode:
            steps.append(Step("LLM-mode decoder ONNX (base Qwen3, LoRA off; shares embed_tokens.npy)", graph,
                              action=partial(decoder_onnx.export_decoder_onnx, checkpoint, out, lora=False)))  # fmt: skip
            manifest["llm_decoder"] = LLM_DECODER_ONNX
        if precision in CPU_DECODER_BITS:
            steps += _cpu_quantized_steps(out, manifest, precision, llm_mode)
    else:
        steps += _gpu_steps(checkpoint, out, precision, preset_name or DEFAULT_PRESET, manifest, max_new_tokens,
                            calib_dataset, llm_mode)  # fmt: skip

    steps.append(Step("tokenizer", f"{checkpoint.llm_path} -> {TOKENIZER_DIR}/",
                      action=lambda: copy_tokenizer_files(checkpoint.llm_path, out / TOKENIZER_DIR), cheap=True))  # fmt: skip
    steps.append(Step("manifest", json.dumps(manifest), action=lambda: write_export_info(out, manifest), cheap=True))
    models = MODELS + (LLM_MODE_MODELS if llm_mode else ())
    steps.append(Step(f"Triton model repository ({target} flavour)", f"{out / MODEL_REPOSITORY}: {', '.join(models)}",
                      action=lambda: write_model_repository(out, manifest), cheap=True))  # fmt: skip
    return steps


def _cpu_quantized_steps(out, manifest, precision, llm_mode) -> list[Step]:
    """int8 or int4: the int8 encoder, then each decoder's MatMulNBits weights; the manifest names them as served."""
    from . import quantize

    bits, graphs = CPU_DECODER_BITS[precision], CPU_GRAPHS[precision]
    decoders = [(DECODER_ONNX, graphs["decoder"])] + ([(LLM_DECODER_ONNX, graphs["llm_decoder"])] if llm_mode else [])
    head = "" if quantize.HEAD_BITS[bits] == bits else f", lm_head {quantize.HEAD_BITS[bits]} bit"
    steps = [Step("encoder int8 weights (dynamic int8 MatMuls; front end and attention fp32)", ENCODER_INT8_ONNX,
                  action=partial(quantize.quantize_encoder_int8, out / ENCODER_ONNX, out / ENCODER_INT8_ONNX))]  # fmt: skip
    steps += [Step(f"{fp32.removesuffix('.onnx')} {precision} weights (MatMulNBits, {bits} bit, block "
                   f"{quantize.BLOCK_SIZE[bits]}{head}, int8 compute)", quantized,
                   action=partial(quantize.quantize_decoder, out / fp32, out / quantized, bits))
              for fp32, quantized in decoders]  # fmt: skip
    manifest.update(encoder=graphs["encoder"], decoder=graphs["decoder"])
    if llm_mode:
        manifest["llm_decoder"] = graphs["llm_decoder"]
    return steps


def _gpu_steps(checkpoint, out, precision, preset_name, manifest, max_new_tokens, calib_dataset, llm_mode) -> list[Step]:
    from . import hf_checkpoint, tensorrt, trtllm
    from .presets import get_preset

    preset = get_preset(preset_name, max_new_tokens=max_new_tokens, **GPU_PRECISION[precision])
    calibration = trtllm.check_calibration(preset, calib_dataset)  # before any work: fp8 needs local text
    onnx_path, engine = out / ENCODER_ONNX, out / ENCODER_PLAN
    hf_dir, ckpt_dir, engine_dir = out / HF_LLM_DIR, out / TRTLLM_CHECKPOINT_DIR, out / TRTLLM_ENGINE_DIR
    shapes = ", ".join(f"{name} min/opt/max {list(s)}" for name, s in preset.encoder_shapes().items())
    manifest.update(preset=preset.name, encoder_engine=ENCODER_PLAN, llm_engine=engine_dir.name,
                    max_batch_size=preset.llm_max_batch, encoder_max_batch_size=preset.encoder_max_batch,
                    budgets=preset.budgets.to_manifest(), kv_cache_free_gpu_mem_fraction=preset.kv_cache_free_gpu_mem_fraction)  # fmt: skip
    return [
        Step(f"encoder TensorRT engine ({preset.encoder_precision}; front end, LayerNorm, Softmax in FP32)", shapes,
             command=lambda: tensorrt.build_command(onnx_path, engine, preset, out / "timing.cache"), engine=True),
        Step("merged HF Qwen3 checkpoint (float16, explicit lm_head)", str(hf_dir),
             action=partial(hf_checkpoint.write_merged_hf_checkpoint, checkpoint, hf_dir, "float16")),
        Step(f"TensorRT-LLM checkpoint (quantization: {preset.llm_quantization})", str(ckpt_dir),
             command=lambda: trtllm.convert_command(hf_dir, ckpt_dir, preset, calibration), engine=True),
        Step("TensorRT-LLM engine", f"max_batch_size {preset.llm_max_batch}, max_input_len {preset.max_input_len}, "
             f"max_seq_len {preset.max_seq_len}, max_prompt_embedding_table_size {preset.max_prompt_embedding_table_size} "
             f"({preset.audio_rows} audio rows x {preset.llm_max_batch})",
             command=lambda: trtllm.build_command(ckpt_dir, engine_dir, preset), engine=True),
    ] + (_gpu_llm_mode_steps(checkpoint, out, preset, manifest, calibration) if llm_mode else [])  # fmt: skip


def _gpu_llm_mode_steps(checkpoint, out, preset, manifest, calibration) -> list[Step]:
    """The base LLM's engine: the ASR LLM's flow without the LoRA and without a prompt table (text only)."""
    from . import hf_checkpoint, trtllm

    budgets = LlmBudgets.from_manifest(manifest)
    hf_dir, ckpt_dir, engine_dir = out / HF_BASE_LLM_DIR, out / TRTLLM_BASE_CHECKPOINT_DIR, out / TRTLLM_BASE_ENGINE_DIR
    manifest["llm_decoder_engine"] = engine_dir.name
    return [
        Step("base HF Qwen3 checkpoint (LoRA off, float16, explicit lm_head)", str(hf_dir),
             action=partial(hf_checkpoint.write_merged_hf_checkpoint, checkpoint, hf_dir, "float16", lora=False)),
        Step(f"base-LLM TensorRT-LLM checkpoint (quantization: {preset.llm_quantization})", str(ckpt_dir),
             command=lambda: trtllm.convert_command(hf_dir, ckpt_dir, preset, calibration), engine=True),
        Step("base-LLM TensorRT-LLM engine", f"max_batch_size {preset.llm_max_batch}, max_input_len "
             f"{budgets.max_input_len}, max_seq_len {budgets.max_context_tokens}, no prompt table",
             command=lambda: trtllm.build_command(ckpt_dir, engine_dir, preset, budgets), engine=True),
    ]  # fmt: skip


def export(checkpoint_dir, out, target: str = "cpu", precision: str | None = None, preset: str | None = None,
           dry_run: bool = False, log=print, stage: str = "all", max_new_tokens: int = MAX_NEW_TOKENS,
           calib_dataset: Path | None = None, llm_mode: bool = False, isolate: bool | None = None) -> list[Step]:  # fmt: skip
    """`stage` (GPU): all | prepare | engines, see the module doc. `max_new_tokens`: the build's budget per
    request (the GPU engine's max_seq_len follows). `calib_dataset`: a local text data set, for fp8 only.
    `llm_mode`: add the base LLM (llm_decoder) for the model card's LLM mode (module doc). `isolate`: run each
    heavy step in a process of its own (run_apart); None: when the checkpoint's weights are over APART_BYTES."""
    if stage not in STAGES:
        raise InvalidInput(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if stage != "all" and target != "gpu":
        raise InvalidInput(f"--stage {stage} splits a GPU build; a CPU build has one stage")
    checkpoint = Checkpoint.open(checkpoint_dir)
    out = Path(out).resolve()
    steps = [step for step in plan(checkpoint, out, target, precision, preset, max_new_tokens, calib_dataset, llm_mode)
             if stage == "all" or step.engine == (stage == "engines")]  # fmt: skip
    if stage == "engines" and not dry_run:
        _check_prepared(out, checkpoint, precision or PRECISIONS[target][0], preset or DEFAULT_PRESET, llm_mode)
    if stage != "engines" and not dry_run and importlib.util.find_spec("nemo") is None:
        # e.g. `--stage all` in the NGC container: say so now, not after the GPU stack checks
        raise MissingFile("the encoder ONNX export needs NeMo (nemo-toolkit[asr], in canary-trt[full]); in the "
                                "TensorRT container run `--stage engines` on a folder prepared elsewhere with "
                                "`--stage prepare`")  # fmt: skip
    if target == "gpu" and stage != "prepare" and not dry_run:
        from .presets import require_gpu_stack

        require_gpu_stack()  # fail at once, not after minutes of ONNX export
    apart = checkpoint.weights_file.stat().st_size > APART_BYTES if isolate is None else isolate
    began = time.time() - 1  # file times can lag the clock by a tick
    for number, step in enumerate(steps, 1):
        log(f"[{number}/{len(steps)}] {step.title}\n      {step.detail}")
        command = step.command() if step.command else None  # after the steps before it have run
        if command:
            log("      $ " + shlex.join(command))
        if dry_run and not step.cheap:
            continue
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if command:
            subprocess.run(command, check=True)
        elif apart and not step.cheap:
            run_apart(step.action)
        else:
            step.action()
        log(f"      done in {time.perf_counter() - start:.1f} s")
    _make_readable(out, began)
    return steps


def run_apart(action: Callable[[], object]) -> None:
    """A heavy step in a fresh interpreter (spawned: nothing of this process's threads or state): the memory an
    exporter holds (weights, graphs, their caches) goes back to the OS when it ends, so steps do not pile up. In
    one process a full-size --llm-mode export (two decoders) was killed for memory on a 23.5 GiB machine after
    reaching 24 GiB; each step alone peaks near 17.4 GiB. A step that fails raises here; one killed (out of
    memory) raises BrokenProcessPool, naming no step: the log line above it does."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as child:
        child.submit(action).result()


def _make_readable(out: Path, since: float) -> None:
    """Exporters write some files 0600, and the serving user must read them all: open up what this export
    wrote (changed since it began), never the files a user keeps in the folder."""
    for path in out.rglob("*"):
        if not path.is_symlink() and path.stat().st_mtime >= since:
            path.chmod(0o755 if path.is_dir() else 0o644)


def _check_prepared(out: Path, checkpoint: Checkpoint, precision: str, preset: str, llm_mode: bool) -> None:
    """The `engines` stage builds on a `prepare` of the same checkpoint, precision, preset and --llm-mode."""
    needed = (ENCODER_ONNX, HF_LLM_DIR, EXPORT_INFO) + ((HF_BASE_LLM_DIR,) if llm_mode else ())
    missing = [name for name in needed if not (out / name).exists()]
    if missing:
        raise MissingFile(f"{out} lacks {', '.join(missing)}: run `canary-trt export --target gpu --stage prepare` "
                                "into it first")  # fmt: skip
    manifest = read_export_info(out)
    prepared = {**manifest, "llm_mode": "llm_mode" in manifest}
    wanted = {"checkpoint": str(checkpoint.path), "precision": precision, "preset": preset, "llm_mode": llm_mode}
    differ = {key: prepared.get(key) for key, value in wanted.items() if prepared.get(key) != value}
    if differ:
        raise InvalidInput(f"{out} was prepared with {differ}, not {', '.join(f'{k} {wanted[k]}' for k in differ)}: "
                         "prepare it again with the same options")  # fmt: skip
