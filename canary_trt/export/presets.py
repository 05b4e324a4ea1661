"""The GPU build's pinned stack and one preset per GPU: batch sizes, audio length, precisions, memory.

Everything the engine builds derive from a preset (prompt-table size, max input length, encoder profile
shapes) is computed here, in one place, from the model's own frame arithmetic (docs/MODEL.md#frame-arithmetic).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from dataclasses import dataclass

from ..contract import (INPUT_WAV, INPUT_WAV_LENS, MAX_AUDIO_SECONDS, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, MIN_AUDIO_SECONDS,
                        SAMPLE_RATE, Budgets)
from ..errors import InvalidInput, MissingFile

# The pinned stack (docs/GPU.md#pins): the last TensorRT-LLM line with the engine flow (trtllm-build and the
# C++ `tensorrtllm` Triton backend) and the NGC container that carries it with a matching TensorRT.
TRITON_CONTAINER = "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3"
TENSORRT_VERSION = "10.14.1.48"
TENSORRT_LLM_VERSION = "1.2.1"

LLM_DTYPE = "float16"  # the prompt table crosses python models, which cannot carry BF16 (docs/GPU.md#llm-engine)
ENCODER_PRECISIONS = ("fp16", "bf16")
LLM_QUANTIZATIONS = ("none", "int8_wo", "fp8")
FP8_MIN_SM = 89  # FP8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell


@dataclass(frozen=True)
class Preset:
    """Build shapes and precisions for one GPU. Fields are choices; properties are derived from them."""

    name: str
    gpu: str
    memory_gb: int
    sm: int  # compute capability x10
    encoder_max_batch: int  # TensorRT profile max; Triton's encoder max_batch_size must not exceed it
    llm_max_batch: int  # in-flight requests the LLM engine schedules at once
    opt_batch: int  # encoder profile optimum: TensorRT picks kernels for this shape
    opt_seconds: float
    kv_cache_free_gpu_mem_fraction: float  # of the memory left free once the engines are loaded
    max_num_tokens: int  # tokens in one engine step (context chunks + one per generating request)
    workspace_mib: int  # TensorRT builder scratch for the encoder
    # fp16 with the front end, LayerNorm and Softmax pinned to FP32: more mantissa than bf16 where it
    # matters; bf16 is the fallback where FP16 still overflows.
    encoder_precision: str = "fp16"
    # "none" (FP16 weights and KV cache) is the safe default: FP8 scales are calibrated on text, never on
    # audio-embedding activations; int8_wo (W8A16) only trims weight memory, which a 1.7B model barely needs.
    llm_quantization: str = "none"
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    max_new_tokens: int = MAX_NEW_TOKENS  # export --max-new-tokens: the engine's max_seq_len follows

    def __post_init__(self):
        problems = []
        if self.encoder_precision not in ENCODER_PRECISIONS:
            problems.append(f"encoder_precision must be one of {ENCODER_PRECISIONS}, not {self.encoder_precision!r}")
        if self.llm_quantization not in LLM_QUANTIZATIONS:
            problems.append(f"llm_quantization must be one of {LLM_QUANTIZATIONS}, not {self.llm_quantization!r}")
        if self.llm_quantization == "fp8" and self.sm < FP8_MIN_SM:
            problems.append(f"fp8 needs compute capability >= {FP8_MIN_SM / 10} ({self.gpu} is {self.sm / 10})")
        if not 0 < self.kv_cache_free_gpu_mem_fraction < 1:
            problems.append("kv_cache_free_gpu_mem_fraction must be between 0 and 1")
        if not 1 <= self.opt_batch <= self.encoder_max_batch or self.llm_max_batch < 1:
            problems.append("batch sizes must satisfy 1 <= opt_batch <= encoder_max_batch and llm_max_batch >= 1")
        if not MIN_AUDIO_SECONDS <= self.opt_seconds <= self.max_audio_seconds:
            problems.append(f"opt_seconds must lie in [{MIN_AUDIO_SECONDS}, max_audio_seconds]")
        try:
            self.budgets
        except ValueError as e:
            problems.append(str(e))
        else:
            if self.max_num_tokens < self.max_input_len:  # without chunked context a prompt is one step
                problems.append(f"max_num_tokens {self.max_num_tokens} < max_input_len {self.max_input_len}")
        if problems:
            raise InvalidInput(f"preset {self.name!r}: " + "; ".join(problems))

    @property
    def budgets(self) -> Budgets:
        """The request budgets this engine is built for (export.json records them; the adapter enforces them)."""
        return Budgets(self.max_audio_seconds, self.max_prompt_tokens, self.max_new_tokens)

    @property
    def max_samples(self) -> int:
        return self.budgets.max_samples

    @property
    def audio_rows(self) -> int:
        """R: the most audio embeddings one request carries."""
        return self.budgets.audio_rows

    @property
    def max_input_len(self) -> int:
        return self.budgets.max_input_len

    @property
    def max_seq_len(self) -> int:
        return self.budgets.max_seq_len

    @property
    def max_prompt_embedding_table_size(self) -> int:
        return self.audio_rows * self.llm_max_batch  # every scheduled request with a full-length clip

    def encoder_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape per encoder input; WAV in samples."""
        batches = (1, self.opt_batch, self.encoder_max_batch)
        samples = (round(MIN_AUDIO_SECONDS * SAMPLE_RATE), round(self.opt_seconds * SAMPLE_RATE), self.max_samples)
        return {INPUT_WAV: tuple(zip(batches, samples)), INPUT_WAV_LENS: tuple((b,) for b in batches)}


# Sizing. Fixed costs: LLM engine 4.1 GB (FP16, untied head), encoder engine 1.6 GB, encoder activations
# ~90 MB per 40-s clip at the profile max (reserved when the engine loads), CUDA contexts and Triton's python
# models ~2.5 GB. KV cache: 112 KiB per token in FP16, 76 MiB for a full 40-s request (max_seq_len 691),
# ~20 MiB for a typical 10-s one. The KV fraction holds llm_max_batch full-length requests with >= 1.5x
# margin (paged blocks, nothing is reused) and leaves the rest free for models Triton loads after the LLM.
PRESETS = {
    p.name: p
    for p in (
        # 32 GB: ~22 GB free after load -> 9 GB KV (~115 full requests) for 64 in flight; encoder batch 16
        # keeps its reserved activations ~1.5 GB. SM 12.0 (both Blackwell cards): TensorRT has given wrong
        # FastConformer output there, so the ONNX Runtime parity check must pass on the card (docs/GPU.md#gpu-check).
        Preset("rtx5090", "GeForce RTX 5090", 32, 120, encoder_max_batch=16, llm_max_batch=64, opt_batch=8,
               opt_seconds=20, kv_cache_free_gpu_mem_fraction=0.4, max_num_tokens=8192, workspace_mib=4096),
        # 96 GB Blackwell workstation card: the 80 GB shapes; ~85 GB free -> 34 GB KV (~430 full requests).
        Preset("rtx-pro-6000", "RTX PRO 6000 Blackwell", 96, 120, encoder_max_batch=32, llm_max_batch=256,
               opt_batch=16, opt_seconds=20, kv_cache_free_gpu_mem_fraction=0.4, max_num_tokens=16384,
               workspace_mib=8192),
        # 48 GB, about half an H100's FP16 throughput: larger encoder batches would only add latency.
        # ~38 GB free -> 15 GB KV (~190 full requests) for 128 in flight.
        Preset("l40s", "L40S", 48, 89, encoder_max_batch=16, llm_max_batch=128, opt_batch=8, opt_seconds=20,
               kv_cache_free_gpu_mem_fraction=0.4, max_num_tokens=8192, workspace_mib=4096),
        # 80 GB (A100 is the leaderboard's card; NeMo ran batch 192): ~69 GB free -> 34 GB KV (~430 full
        # requests) for 256 in flight. A100 (SM80) has no FP8.
        Preset("a100", "A100 80GB", 80, 80, encoder_max_batch=32, llm_max_batch=256, opt_batch=16,
               opt_seconds=20, kv_cache_free_gpu_mem_fraction=0.5, max_num_tokens=16384, workspace_mib=8192),
        Preset("h100", "H100 80GB", 80, 90, encoder_max_batch=32, llm_max_batch=256, opt_batch=16,
               opt_seconds=20, kv_cache_free_gpu_mem_fraction=0.5, max_num_tokens=16384, workspace_mib=8192),
    )
}  # fmt: skip


def get_preset(name: str, **overrides) -> Preset:
    """The named preset with some fields replaced (e.g. encoder_precision="bf16"), validated again."""
    if name not in PRESETS:
        raise InvalidInput(f"unknown GPU preset {name!r}; known presets: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(Preset)} - {"name", "gpu", "memory_gb", "sm"}
    unknown = sorted(overrides.keys() - fields)
    if unknown:
        raise InvalidInput(f"cannot override {', '.join(unknown)}; preset fields: {', '.join(sorted(fields))}")
    return dataclasses.replace(PRESETS[name], **overrides)


class MissingToolError(MissingFile):
    """A GPU build tool that is not installed here: the build needs the pinned container."""

    def __init__(self, what: str):
        super().__init__(
            f"{what} not found: the GPU build runs inside {TRITON_CONTAINER} "
            f"(TensorRT {TENSORRT_VERSION}, TensorRT-LLM {TENSORRT_LLM_VERSION})"
        )


def require_executable(name: str) -> None:
    if shutil.which(name) is None:
        raise MissingToolError(f"`{name}` (not on PATH)")


def require_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise MissingToolError(f"Python module `{name}`")


def require_gpu_stack() -> None:
    """Fail before any slow step when this is not the pinned container. The encoder engine is built with
    TensorRT's Python API (export/tensorrt.py): `trtexec` is not on the container's PATH."""
    require_module("tensorrt")
    require_module("tensorrt_llm")
    require_executable("trtllm-build")
