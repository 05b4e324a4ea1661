"""The LLM engine with TensorRT-LLM's engine flow: merged HF Qwen3 directory -> TRT-LLM checkpoint -> engine.

Both steps are commands, so a dry run prints exactly what a build runs (GPU.md):
1. convert: TensorRT-LLM's Python API, `QWenForCausalLM.from_hugging_face(...)` + `save_checkpoint`, or
   for FP8 `QWenForCausalLM.quantize(...)`, which calibrates (ModelOpt) and writes the checkpoint itself.
   It runs as `python -m canary_trt.export.trtllm`, so tensorrt_llm is imported in that process only;
2. build: `trtllm-build` with every flag explicit, since defaults moved between versions.
The engine is FP16 whatever the quantization: the prompt table it receives is FP16.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .presets import LLM_DTYPE, LLM_QUANTIZATIONS, MissingToolError, Preset, require_executable, require_module

MODULE = "canary_trt.export.trtllm"
# TensorRT-LLM's example default: a Hugging Face dataset name or a local dataset directory. The GPU machine
# may be offline: pass a local copy there. (verify: loading a local directory in ModelOpt's calibration)
CALIB_DATASET = "ccdv/cnn_dailymail"


@dataclass(frozen=True)
class Quantization:
    quant_algo: str | None  # a tensorrt_llm.quantization.QuantAlgo member name
    kv_cache_quant_algo: str | None
    calibrated: bool  # needs QWenForCausalLM.quantize and calibration data
    gemm_plugin: str
    fp8_context_fmha: str


QUANTIZATIONS = {
    "none": Quantization(None, None, calibrated=False, gemm_plugin="auto", fp8_context_fmha="disable"),
    # W8A16: int8 weights, FP16 activations; the converter quantizes without calibration.
    "int8_wo": Quantization("W8A16", None, calibrated=False, gemm_plugin="auto", fp8_context_fmha="disable"),
    # FP8 weights/activations and FP8 KV cache (SM89+). (verify: --gemm_plugin fp8 at 1.2.1)
    "fp8": Quantization("FP8", "FP8", calibrated=True, gemm_plugin="fp8", fp8_context_fmha="enable"),
}


def convert_command(hf_dir: Path, ckpt_dir: Path, preset: Preset, calib_dataset: str = CALIB_DATASET) -> list[str]:
    command = [sys.executable, "-m", MODULE, "--hf-dir", str(hf_dir), "--out", str(ckpt_dir),
               "--quantization", preset.llm_quantization]  # fmt: skip
    if QUANTIZATIONS[preset.llm_quantization].calibrated:
        command += ["--calib-dataset", calib_dataset]
    return command


def build_command(ckpt_dir: Path, engine_dir: Path, preset: Preset) -> list[str]:
    quantization = QUANTIZATIONS[preset.llm_quantization]
    flags = {
        "checkpoint_dir": ckpt_dir,
        "output_dir": engine_dir,
        "gemm_plugin": quantization.gemm_plugin,
        "gpt_attention_plugin": "auto",  # "auto": the checkpoint's dtype, float16
        "kv_cache_type": "paged",  # in-flight batching needs paged KV and no input padding
        "remove_input_padding": "enable",
        "context_fmha": "enable",
        "use_paged_context_fmha": "enable",  # lets the runtime chunk long audio prompts into steps
        "use_fp8_context_fmha": quantization.fp8_context_fmha,
        "max_beam_width": 1,  # greedy, as the reference and the Triton config
        "max_batch_size": preset.llm_max_batch,
        "max_input_len": preset.max_input_len,
        "max_seq_len": preset.max_seq_len,
        "max_num_tokens": preset.max_num_tokens,
        "max_prompt_embedding_table_size": preset.max_prompt_embedding_table_size,
    }
    return ["trtllm-build", *(arg for name, value in flags.items() for arg in (f"--{name}", str(value)))]


def convert_llm_checkpoint(hf_dir: Path, ckpt_dir: Path, preset: Preset, calib_dataset: str = CALIB_DATASET) -> Path:
    require_module("tensorrt_llm")  # the child runs on this interpreter
    subprocess.run(convert_command(hf_dir, ckpt_dir, preset, calib_dataset), check=True)
    return ckpt_dir


def build_llm_engine(ckpt_dir: Path, engine_dir: Path, preset: Preset) -> Path:
    require_executable("trtllm-build")
    subprocess.run(build_command(ckpt_dir, engine_dir, preset), check=True)
    return engine_dir


def convert(hf_dir: Path, ckpt_dir: Path, quantization: str, calib_dataset: str) -> None:
    """The TensorRT-LLM Python API calls themselves; only `python -m canary_trt.export.trtllm` runs this."""
    from tensorrt_llm.mapping import Mapping
    from tensorrt_llm.models import QWenForCausalLM
    from tensorrt_llm.models.modeling_utils import QuantConfig
    from tensorrt_llm.quantization import QuantAlgo

    spec = QUANTIZATIONS[quantization]
    quant_config = QuantConfig(
        quant_algo=spec.quant_algo and QuantAlgo[spec.quant_algo],
        kv_cache_quant_algo=spec.kv_cache_quant_algo and QuantAlgo[spec.kv_cache_quant_algo],
    )
    mapping = Mapping(world_size=1)
    if spec.calibrated:
        QWenForCausalLM.quantize(str(hf_dir), str(ckpt_dir), dtype=LLM_DTYPE, mapping=mapping,
                                 quant_config=quant_config, calib_dataset=calib_dataset)  # fmt: skip
    else:
        model = QWenForCausalLM.from_hugging_face(str(hf_dir), dtype=LLM_DTYPE, mapping=mapping,
                                                  quant_config=quant_config)  # fmt: skip
        model.save_checkpoint(str(ckpt_dir), save_config=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="HF Qwen3 dir -> TensorRT-LLM checkpoint")
    parser.add_argument("--hf-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quantization", choices=LLM_QUANTIZATIONS, default="none")
    parser.add_argument("--calib-dataset", default=CALIB_DATASET)
    args = parser.parse_args(argv)
    try:
        require_module("tensorrt_llm")
    except MissingToolError as e:
        parser.error(str(e))
    convert(args.hf_dir, args.out, args.quantization, args.calib_dataset)


if __name__ == "__main__":
    main()
