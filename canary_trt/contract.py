"""The model's fixed numbers and the serving budgets, in one torch-free place.

Everything that must agree between export (engine shapes), the Triton configs, the python models, the
client and the tests reads it from here: the audio rate and frame arithmetic, the clip length limits, the
prompt and new-token budgets that size the TensorRT-LLM engine and bound the CPU decoder's KV cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InvalidInput

SAMPLE_RATE = 16000
HOP_SAMPLES = 160  # 10 ms mel hop
SUBSAMPLING_CONVS = 3  # dw_striding x8: three stride-2 convolutions -> 12.5 embeddings per second

MIN_AUDIO_SECONDS = 0.1  # shorter clips give too few mel frames; the GPU engine profile's minimum too
MIN_SAMPLES = round(MIN_AUDIO_SECONDS * SAMPLE_RATE)
MAX_AUDIO_SECONDS = 40.0  # the model's training clips are at most 40 s
# canary_qwen_long and the OpenAI front: longer recordings are refused before any decoding or VAD work.
# Two hours: 16 kHz float32 is 230 MB per hour, held in the request tensor in /dev/shm (docs/SERVING.md).
MAX_LONG_AUDIO_SECONDS = 7200

PROMPT_TOKENS = 15  # the default ASR prompt, placeholder included (docs/MODEL.md#prompt-and-splice)
MAX_PROMPT_TOKENS = 64  # room for a longer instruction than the default
MAX_NEW_TOKENS = 128  # the model card's and the leaderboard's generation budget
MAX_PROMPT_BYTES = 2000  # checked before tokenizing: a cheap bound on what the tokenizer is handed

# The public interface in both flavours: the ensemble and its tensors (the encoder's audio inputs share the names).
ENSEMBLE = "canary_qwen"
LONG_FORM_MODEL = "canary_qwen_long"  # long recordings through the ensemble (serving/long_form.py)
INPUT_WAV, INPUT_WAV_LENS, INPUT_PROMPT, INPUT_MAX_NEW_TOKENS = "WAV", "WAV_LENS", "PROMPT", "MAX_NEW_TOKENS"
OUTPUT_TRANSCRIPT, OUTPUT_TOKEN_IDS = "TRANSCRIPT", "TOKEN_IDS"
# LONG_FORM_MODEL's outputs besides TRANSCRIPT, one entry per segment (the token ids concatenated; COUNTS splits them)
OUTPUT_SEGMENT_START_MS, OUTPUT_SEGMENT_END_MS = "SEGMENT_START_MS", "SEGMENT_END_MS"
OUTPUT_SEGMENT_TEXT, OUTPUT_SEGMENT_TRUNCATED = "SEGMENT_TEXT", "SEGMENT_TRUNCATED"
OUTPUT_SEGMENT_TOKEN_IDS, OUTPUT_SEGMENT_TOKEN_COUNTS = "SEGMENT_TOKEN_IDS", "SEGMENT_TOKEN_COUNTS"

# LLM mode (the model card's): ASR mode gives the transcript, then the base Qwen3 (LoRA off) answers a question
# about it; a question without audio goes to the base LLM alone. Built with `canary-trt export --llm-mode`.
CHAT_MODEL = "canary_qwen_chat"  # decoupled BLS: ASR through LONG_FORM_MODEL, then LLM_DECODER (serving/chat.py)
LLM_DECODER = "llm_decoder"  # the base LLM: the decoder's tensorrt_llm contract without a prompt table, streaming
INPUT_QUESTION, INPUT_ENABLE_THINKING, INPUT_STREAM = "QUESTION", "ENABLE_THINKING", "STREAM"
OUTPUT_ANSWER, OUTPUT_REASONING, OUTPUT_ANSWER_TOKEN_IDS = "ANSWER", "REASONING", "ANSWER_TOKEN_IDS"
OUTPUT_TRANSCRIPT_TOKEN_IDS, OUTPUT_FINISH_REASON, OUTPUT_PROMPT_TOKENS = "TRANSCRIPT_TOKEN_IDS", "FINISH_REASON", "PROMPT_TOKENS"
# STREAM=true: before the final response, one response per piece of text: DELTA_TEXT and its DELTA_KIND
OUTPUT_DELTA_TEXT, OUTPUT_DELTA_KIND = "DELTA_TEXT", "DELTA_KIND"  # kind: "reasoning" or "answer"
FINISH_STOP, FINISH_LENGTH = "stop", "length"  # ended at <|im_end|> / at its new-token budget (OpenAI's words)
# A gRPC stream carries an error's message but not its code: CHAT_MODEL starts a refusal's message with this, so
# that clients tell the request's own fault (INVALID_ARGUMENT) from a failure.
STREAM_REFUSAL = "INVALID_ARGUMENT: "

# Live transcription (issue 17): one stream = one Triton sequence of requests to STREAM_MODEL (serving/streaming.py),
# answered with the SEGMENT_* outputs above (one segment per response) and IS_FINAL.
STREAM_MODEL = "canary_qwen_stream"
INPUT_INTERIM_INTERVAL_MS, OUTPUT_IS_FINAL = "INTERIM_INTERVAL_MS", "IS_FINAL"
STREAM_START, STREAM_END, STREAM_CORRID = "START", "END", "CORRID"  # the sequence batcher's control inputs
MIN_INTERIM_INTERVAL_MS = 500  # a re-decode of the open utterance at most twice a second
# Its budgets (config parameters, named so in refusals) and the metrics that show freed streams
MAX_STREAMS, STREAM_IDLE_S, MAX_BUFFERED_SECONDS = 16, 30, 120
METRIC_STREAMS_OPEN, METRIC_STREAMS_EXPIRED = "canary_trt_streams_open", "canary_trt_stream_expired_total"
METRIC_STREAMS_CANCELLED = "canary_trt_stream_cancelled_total"  # freed at once: the client cancelled its gRPC stream

# The build folder (BUILD/...): written by `canary-trt export`, read by the runtimes and the python models.
EXPORT_INFO = "export.json"
ENCODER_ONNX = "encoder.onnx"
ENCODER_INT8_ONNX = "encoder_int8.onnx"
DECODER_ONNX = "decoder.onnx"
DECODER_INT8_ONNX = "decoder_int8.onnx"
DECODER_INT4_ONNX = "decoder_int4.onnx"
EMBEDDINGS = "embed_tokens.npy"  # the decoder's token embedding, outside its graph
TOKENIZER_DIR = "tokenizer"
MODEL_REPOSITORY = "model_repository"
ENCODER_PLAN = "encoder.plan"
HF_LLM_DIR = "hf_llm"
TRTLLM_CHECKPOINT_DIR = "trtllm_checkpoint"
TRTLLM_ENGINE_DIR = "trtllm_engine"
LLM_DECODER_ONNX = "llm_decoder.onnx"  # --llm-mode: the base LLM (no LoRA); it shares EMBEDDINGS (LoRA leaves them)
LLM_DECODER_INT8_ONNX = "llm_decoder_int8.onnx"
LLM_DECODER_INT4_ONNX = "llm_decoder_int4.onnx"
HF_BASE_LLM_DIR = "hf_llm_base"
TRTLLM_BASE_CHECKPOINT_DIR = "trtllm_llm_checkpoint"
TRTLLM_BASE_ENGINE_DIR = "trtllm_llm_engine"
# What a CPU build serves at each --precision (export.json's "encoder", "decoder", "llm_decoder" entries); a
# quantized build keeps the fp32 graphs beside its own. int4 is the decoders' weights only: its encoder is int8's.
CPU_GRAPHS = {
    "fp32": {"encoder": ENCODER_ONNX, "decoder": DECODER_ONNX, "llm_decoder": LLM_DECODER_ONNX},
    "int8": {"encoder": ENCODER_INT8_ONNX, "decoder": DECODER_INT8_ONNX, "llm_decoder": LLM_DECODER_INT8_ONNX},
    "int4": {"encoder": ENCODER_INT8_ONNX, "decoder": DECODER_INT4_ONNX, "llm_decoder": LLM_DECODER_INT4_ONNX},
}

# Speech for the demo, the tests and the benchmarks: Debian's pocketsphinx-testdata (LibriVox clips)
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")

CLIPS_PER_REQUEST = 1  # the ensemble's max_batch_size: the tensorrtllm backend takes one sequence per request


def audio_rows(samples: int) -> int:
    """Audio embeddings (prompt-table rows) for a clip of `samples`: NeMo's valid mel frames floor(N / 160),
    then L -> floor((L - 1) / 2) + 1 per stride-2 convolution. 40 s (640000 samples) -> 500."""
    length = samples // HOP_SAMPLES
    for _ in range(SUBSAMPLING_CONVS):
        length = (length - 1) // 2 + 1
    return length


def bucket_length(samples: int, bucket_samples: int, max_samples: int) -> int:
    """A clip's length padded to its length bucket (audio_check): the next multiple of the bucket, never past
    the longest clip allowed; bucket_samples 0 leaves it unchanged."""
    if bucket_samples <= 0:
        return samples
    return min(-(-samples // bucket_samples) * bucket_samples, max(samples, max_samples))


@dataclass(frozen=True)
class Budgets:
    """What one request may use. Written into BUILD/export.json at export; the GPU engine is built for
    exactly these numbers, and the adapter refuses a request over any of them, by name, in both flavours."""

    max_audio_seconds: float = MAX_AUDIO_SECONDS
    max_prompt_tokens: int = MAX_PROMPT_TOKENS  # chat-template tokens around the audio, placeholder included
    max_new_tokens: int = MAX_NEW_TOKENS

    def __post_init__(self):
        if not MIN_AUDIO_SECONDS < self.max_audio_seconds:
            raise InvalidInput(f"max_audio_seconds must exceed {MIN_AUDIO_SECONDS} s, got {self.max_audio_seconds}")
        if self.max_prompt_tokens < PROMPT_TOKENS:
            raise InvalidInput(f"max_prompt_tokens must be >= {PROMPT_TOKENS} (the default prompt), got {self.max_prompt_tokens}")
        if self.max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def max_samples(self) -> int:
        return round(self.max_audio_seconds * SAMPLE_RATE)

    @property
    def audio_rows(self) -> int:
        """The most audio embeddings one request carries."""
        return audio_rows(self.max_samples)

    @property
    def max_input_len(self) -> int:
        return self.max_prompt_tokens - 1 + self.audio_rows  # the placeholder becomes the audio rows

    @property
    def max_seq_len(self) -> int:
        return self.max_input_len + self.max_new_tokens

    def to_manifest(self) -> dict:
        """The choices and what follows from them (the derived numbers are for readers; choices are read back)."""
        return {**asdict(self), "audio_rows": self.audio_rows, "max_input_len": self.max_input_len,
                "max_seq_len": self.max_seq_len}  # fmt: skip

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Budgets":
        """A build's budgets; builds exported before budgets were recorded get the defaults."""
        recorded = manifest.get("budgets", {})
        return cls(**{name: recorded[name] for name in ("max_audio_seconds", "max_prompt_tokens", "max_new_tokens")
                      if name in recorded})  # fmt: skip


@dataclass(frozen=True)
class LlmBudgets:
    """What one LLM-mode request may use (export.json "llm_mode"; the GPU base-LLM engine is built for them).
    The prompt is NeMo's qwen template around the question and the transcript; prompt + new tokens must fit
    max_context_tokens, which bounds the KV cache: on CPU fp32 it is 2 x layers x kv_heads x head_dim x 4 bytes
    per token (Qwen3-1.7B: 28 x 8 x 128 -> 224 KiB, so 8192 tokens hold 1.75 GiB per sequence)."""

    max_question_tokens: int = 1024
    max_new_tokens: int = 2048  # the model card's LLM-mode budget
    max_context_tokens: int = 8192  # Qwen3-1.7B's own limit is 32768 (max_position_embeddings 40960)

    def __post_init__(self):
        if min(self.max_question_tokens, self.max_new_tokens) < 1:
            raise InvalidInput("LLM-mode max_question_tokens and max_new_tokens must be at least 1")
        if self.max_context_tokens <= self.max_question_tokens:
            raise InvalidInput(f"LLM-mode max_context_tokens {self.max_context_tokens} must exceed max_question_tokens "
                               f"{self.max_question_tokens}")  # fmt: skip

    @property
    def max_input_len(self) -> int:
        """The longest prompt: one new token must still fit the context (the base-LLM engine's max_input_len)."""
        return self.max_context_tokens - 1

    def to_manifest(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "LlmBudgets | None":
        """A build's LLM-mode budgets; None when it was exported without --llm-mode."""
        recorded = manifest.get("llm_mode")
        return None if recorded is None else cls(**{f: recorded[f] for f in asdict(cls()) if f in recorded})
