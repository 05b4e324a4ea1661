"""Build time only: Qwen3-1.7B's tokenizer files rebuilt offline from the Qwen vocabulary that the
qwen-agent wheel ships (the same 151643 byte-level BPE ranks), so no download from the Hugging Face Hub
is needed to build or test the deployment.

Used by the checkpoint tools (random_checkpoint.py) and the tests; it needs `transformers` (its tiktoken
converter and Qwen2Tokenizer's pre-tokenizer regex). Serving never imports it: the python models load the
written tokenizer.json with plain `tokenizers` (tokenizer.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tokenizers import AddedToken, normalizers, processors
from transformers.convert_slow_tokenizer import TikTokenConverter

# The class AutoTokenizer instantiates for Qwen3 rebuilds its pre-tokenizer from this regex
# (single digits, unlike tiktoken's \p{N}{1,3}), so tokenizer.json uses the same one.
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from .errors import MissingFile

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
        raise MissingFile("qwen-agent is not installed; it carries the Qwen vocabulary (qwen.tiktoken)")
    path = Path(spec.submodule_search_locations[0]) / "utils" / "qwen.tiktoken"
    if not path.is_file():
        raise MissingFile(f"Qwen vocabulary not found at {path}")
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
