"""The LLM engines with TensorRT-LLM's engine flow: HF Qwen3 directory -> TRT-LLM checkpoint -> engine. Every
build has the ASR engine (LoRA merged, prompt table for the audio); `--llm-mode` adds the base LLM's (text only).

Both steps are commands, so a dry run prints exactly what a build runs (docs/GPU.md#llm-engine):
1. convert: TensorRT-LLM's Python API, `QWenForCausalLM.from_hugging_face(...)` + `save_checkpoint`, or
   for FP8 `QWenForCausalLM.quantize(...)`, which calibrates (ModelOpt) and writes the checkpoint itself.
   It runs as `python -m canary_trt.export.trtllm`, so tensorrt_llm is imported in that process only;
2. build: `trtllm-build` with every flag explicit, since defaults moved between versions.
The engine is FP16 whatever the quantization: the prompt table it receives is FP16.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..contract import LlmBudgets
from ..errors import InvalidInput, MissingFile
from .presets import LLM_DTYPE, LLM_QUANTIZATIONS, MissingToolError, Preset, require_module

MODULE = "canary_trt.export.trtllm"
# FP8 calibration data. QWenForCausalLM.quantize (tensorrt_llm/models/qwen/model.py @ 04a2cacb) hands
# `calib_dataset` to ModelOpt's flow, whose get_calib_dataloader (tensorrt_llm/quantization/
# quantize_by_modelopt.py @ 585c7565) reads a local directory with `datasets.load_dataset(dir, split="train")`
# and takes the first `calib_batches` (default 512) rows of its "text" column. Its default, cnn_dailymail,
# comes from the Hub, which the export Job cannot reach, and names containing "cnn_dailymail", "scienceqa"
# or "science_qa", or equal to "pileval", take other branches there (other columns, or a download).
CALIB_TEXT_COLUMN = "text"
CALIB_SAMPLES = 512  # what TensorRT-LLM reads of the set by default
MIN_CALIB_TEXTS = 32  # fewer gives activation scales from too little data to trust
CALIB_RESERVED_NAMES = ("cnn_dailymail", "scienceqa", "science_qa")


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


def check_calibration(preset: Preset, calib_dataset: Path | None) -> Path | None:
    """The calibration set a preset's LLM quantization needs, checked before any work: fp8 needs a local
    text data set of at least MIN_CALIB_TEXTS non-empty rows; the other precisions take none."""
    if not QUANTIZATIONS[preset.llm_quantization].calibrated:
        if calib_dataset is not None:
            raise InvalidInput(f"--calib-dataset calibrates FP8 only; quantization {preset.llm_quantization!r} needs none")
        return None
    if calib_dataset is None:
        raise InvalidInput("--precision fp8 needs --calib-dataset DIR: a local text data set for the LLM's FP8 scales "
                         "(the build runs offline; TensorRT-LLM's default, cnn_dailymail, is downloaded from the Hub). "
                         f"DIR holds e.g. train.jsonl with one {{\"{CALIB_TEXT_COLUMN}\": ...}} per line: transcripts "
                         "of the speech you serve suit it best (docs/GPU.md#fp8-calibration)")  # fmt: skip
    path = Path(calib_dataset).resolve()
    if not path.is_dir():
        raise MissingFile(f"--calib-dataset {calib_dataset}: no such directory")
    lowered = str(path).lower()
    reserved = [name for name in CALIB_RESERVED_NAMES if name in lowered] + (["pileval"] * (path.name == "pileval"))
    if reserved:
        raise InvalidInput(f"--calib-dataset {path}: TensorRT-LLM treats a path containing {reserved[0]!r} as its own "
                         "named data set (other columns, or a download); rename the directory")  # fmt: skip
    texts = _calibration_texts(path)
    if len(texts) < MIN_CALIB_TEXTS:
        raise InvalidInput(f"--calib-dataset {path}: {len(texts)} non-empty {CALIB_TEXT_COLUMN!r} rows in its train "
                         f"split; FP8 calibration needs at least {MIN_CALIB_TEXTS} (TensorRT-LLM reads up to {CALIB_SAMPLES})")  # fmt: skip
    return path


def _calibration_texts(path: Path) -> list[str]:
    """The rows TensorRT-LLM will read, loaded the way it loads them."""
    import datasets

    try:
        split = datasets.load_dataset(str(path), split="train")
    except Exception as e:  # datasets raises many kinds for an unreadable folder; name the folder
        raise InvalidInput(f"--calib-dataset {path}: `datasets.load_dataset` cannot read a train split: {e}") from None
    if CALIB_TEXT_COLUMN not in split.column_names:
        raise InvalidInput(f"--calib-dataset {path}: its train split has columns {split.column_names}, no {CALIB_TEXT_COLUMN!r}")
    rows = split[:CALIB_SAMPLES][CALIB_TEXT_COLUMN]
    return [text for text in rows if isinstance(text, str) and text.strip()]


def convert_command(hf_dir: Path, ckpt_dir: Path, preset: Preset, calib_dataset: Path | None = None) -> list[str]:
    command = [sys.executable, "-m", MODULE, "--hf-dir", str(hf_dir), "--out", str(ckpt_dir),
               "--quantization", preset.llm_quantization]  # fmt: skip
    if QUANTIZATIONS[preset.llm_quantization].calibrated:
        command += ["--calib-dataset", str(calib_dataset)]
    return command


def build_command(ckpt_dir: Path, engine_dir: Path, preset: Preset, llm_mode: LlmBudgets | None = None) -> list[str]:
    """The ASR engine's trtllm-build, or with `llm_mode` the base LLM's: the same batch, plugins and
    quantization, shaped by the LLM-mode context instead of the audio budgets, and without a prompt table.
    Flags as parsed by tensorrt_llm/commands/build.py (NVIDIA/TensorRT-LLM @ 65f1d1536e18aea3380e6e270e00895a709333eb):
    --max_input_len, --max_seq_len, --max_batch_size, --max_num_tokens, --max_prompt_embedding_table_size
    are plain ints there; a table size of 0 (BuildConfig's default) builds no prompt-tuning input at all."""
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
        "max_input_len": preset.max_input_len if llm_mode is None else llm_mode.max_input_len,
        "max_seq_len": preset.max_seq_len if llm_mode is None else llm_mode.max_context_tokens,
        # 8192 or more on every preset: a full LLM-mode prompt (8191 tokens) fits one step (tests/test_llm_export.py)
        "max_num_tokens": preset.max_num_tokens,
        "max_prompt_embedding_table_size": preset.max_prompt_embedding_table_size if llm_mode is None else 0,
    }
    return ["trtllm-build", *(arg for name, value in flags.items() for arg in (f"--{name}", str(value)))]


def convert(hf_dir: Path, ckpt_dir: Path, quantization: str, calib_dataset: Path | None) -> None:
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
                                 quant_config=quant_config, calib_dataset=str(calib_dataset))  # fmt: skip
    else:
        model = QWenForCausalLM.from_hugging_face(str(hf_dir), dtype=LLM_DTYPE, mapping=mapping,
                                                  quant_config=quant_config)  # fmt: skip
        model.save_checkpoint(str(ckpt_dir), save_config=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="HF Qwen3 dir -> TensorRT-LLM checkpoint")
    parser.add_argument("--hf-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quantization", choices=LLM_QUANTIZATIONS, default="none")
    parser.add_argument("--calib-dataset", type=Path, help="fp8: a local text data set (checked by the export)")
    args = parser.parse_args(argv)
    try:
        require_module("tensorrt_llm")
    except MissingToolError as e:
        parser.error(str(e))
    convert(args.hf_dir, args.out, args.quantization, args.calib_dataset)


if __name__ == "__main__":
    main()
