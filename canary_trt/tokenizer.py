"""Canary-Qwen-2.5B's text side: the Qwen3 tokenizer and the ASR prompt.

The model's LLM is Qwen/Qwen3-1.7B. Its tokenizer is rebuilt offline from the Qwen vocabulary
that the qwen-agent wheel ships (the same 151643 byte-level BPE ranks), so no download from
the Hugging Face Hub is needed to build or test the deployment.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Sequence

from tokenizers import AddedToken, normalizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import TikTokenConverter

# The class AutoTokenizer instantiates for Qwen3 rebuilds its pre-tokenizer from this regex
# (single digits, unlike tiktoken's \p{N}{1,3}), so tokenizer.json uses the same one.
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

AUDIO_PLACEHOLDER = "<|audioplaceholder|>"
DEFAULT_INSTRUCTION = "Transcribe the following:"

# Qwen3's added tokens, ids 151643.. in this order. Only the first group is special, i.e.
# dropped by decode(); the tool/fim/think markers are plain added tokens, as in Qwen3-1.7B.
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN3_PLAIN_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)


def qwen_vocab_file() -> Path:
    """The Qwen tiktoken vocabulary inside the qwen-agent wheel.

    Found without importing qwen_agent: it is installed without its dependencies.
    """
    spec = importlib.util.find_spec("qwen_agent")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("qwen-agent is not installed; it carries the Qwen vocabulary (qwen.tiktoken)")
    path = Path(spec.submodule_search_locations[0]) / "utils" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"Qwen vocabulary not found at {path}")
    return path


def write_qwen3_tokenizer(out_dir: Path) -> None:
    """Save Qwen3-1.7B's tokenizer files (tokenizer.json, tokenizer_config.json) into out_dir.

    The output is byte-for-byte reproducible. Its merge list is longer than Qwen's merges.txt
    (the converter lists every way to split a token), but the ids are the same.
    """
    backend = TikTokenConverter(vocab_file=str(qwen_vocab_file()), pattern=PRETOKENIZE_REGEX).converted()
    # Where the converter's defaults differ from Qwen3's tokenizer.json.
    backend.normalizer = normalizers.NFC()
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.model.ignore_merges = False
    backend.add_tokens(
        [AddedToken(t, normalized=False, special=True) for t in QWEN3_SPECIAL_TOKENS]
        + [AddedToken(t, normalized=False, special=False) for t in QWEN3_PLAIN_ADDED_TOKENS]
    )
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=list(QWEN3_SPECIAL_TOKENS[1:]),  # Qwen3's additional_special_tokens
        errors="replace",
        add_prefix_space=False,
        model_max_length=131072,
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(out_dir)


# Every tokenizer file a Hugging Face Qwen3 directory may carry.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")  # fmt: skip


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """The tokenizer of an LLM directory, so that a build or a merged checkpoint is self-contained."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def load_tokenizer(llm_dir: str | Path) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with the audio placeholder registered as SALM registers it."""
    tokenizer = AutoTokenizer.from_pretrained(llm_dir, local_files_only=Path(llm_dir).is_dir())
    # Same call as SALM.__init__: the placeholder is appended as a special token (id 151669 for
    # Qwen3); the checkpoint is not saved with it.
    tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_PLACEHOLDER]})
    return tokenizer


def placeholder_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of AUDIO_PLACEHOLDER, whose embeddings are replaced by the audio encoder's output."""
    added = tokenizer.get_added_vocab()
    if AUDIO_PLACEHOLDER not in added:
        raise ValueError(f"the tokenizer has no {AUDIO_PLACEHOLDER} token; load it with load_tokenizer()")
    return added[AUDIO_PLACEHOLDER]


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Generation stops here: <|im_end|> for Qwen3 (SALM's text_eos_id)."""
    return tokenizer.eos_token_id


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Left padding of batched prompts: <|endoftext|> for Qwen3 (SALM's text_pad_id)."""
    return tokenizer.pad_token_id


def asr_prompt_ids(tokenizer: PreTrainedTokenizerBase, instruction: str = DEFAULT_INSTRUCTION) -> list[int]:
    """Prompt ids of NeMo's "qwen" format: one user turn, then the assistant generation prefix."""
    if not instruction.strip():
        raise ValueError("the ASR instruction is empty")
    if AUDIO_PLACEHOLDER in instruction:
        raise ValueError(f"the ASR instruction must not contain {AUDIO_PLACEHOLDER}: it is appended after it")
    placeholder_id(tokenizer)  # fail here rather than encode the placeholder as plain text
    text = f"<|im_start|>user\n{instruction} {AUDIO_PLACEHOLDER}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer.encode(text, add_special_tokens=False)


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Transcript text of generated ids, without special tokens (eos, pad) or edge whitespace."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
