"""Canary-Qwen-2.5B's text side at run time: the Qwen3 tokenizer and the ASR prompt.

Runtime code only: plain `tokenizers` on the LLM directory's tokenizer.json (+ tokenizer_config.json for
the eos and pad tokens), no transformers, no torch, so that the Triton python models import the same code
under any transformers the serving container carries (the NGC TensorRT-LLM container pins its own). It
gives the ids transformers' AutoTokenizer gives for the same files (tests/test_tokenizer.py compares them).
The offline reconstruction of those files from the Qwen vocabulary is build-time code: tokenizer_build.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenizers import AddedToken, Tokenizer

from .errors import InvalidInput, MissingFile

AUDIO_PLACEHOLDER = "<|audioplaceholder|>"
DEFAULT_INSTRUCTION = "Transcribe the following:"

# Every tokenizer file a Hugging Face Qwen3 directory may carry.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")  # fmt: skip


@dataclass(frozen=True)
class QwenTokenizer:
    """The `tokenizers` backend and the two special ids the deployment needs."""

    backend: Tokenizer
    eos_token_id: int
    pad_token_id: int

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, added tokens (<|im_start|>, the placeholder, ...) matched; nothing prepended."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """The tokenizer of an LLM directory, so that a build or a merged checkpoint is self-contained."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def load_tokenizer(llm_dir: str | Path) -> QwenTokenizer:
    """The LLM's tokenizer with the audio placeholder registered as SALM registers it."""
    llm_dir = Path(llm_dir)
    spec, config = llm_dir / "tokenizer.json", llm_dir / "tokenizer_config.json"
    for path in (spec, config):
        if not path.is_file():
            raise MissingFile(f"{path} not found: the LLM directory's tokenizer is tokenizer.json + tokenizer_config.json")
    backend = Tokenizer.from_file(str(spec))
    # As SALM.__init__ does (add_special_tokens with the placeholder as an additional special token): it is
    # appended after Qwen3's added tokens (id 151669); the checkpoint is not saved with it.
    if backend.token_to_id(AUDIO_PLACEHOLDER) is None:
        backend.add_special_tokens([AddedToken(AUDIO_PLACEHOLDER, special=True, normalized=False)])
    settings = json.loads(config.read_text(encoding="utf-8"))
    return QwenTokenizer(backend, _token_id(backend, settings, "eos_token"), _token_id(backend, settings, "pad_token"))


def _token_id(backend: Tokenizer, settings: dict, key: str) -> int:
    """tokenizer_config.json names the token as a string or as a serialized AddedToken ({"content": ...})."""
    value = settings.get(key)
    token = value.get("content") if isinstance(value, dict) else value
    token_id = backend.token_to_id(token) if isinstance(token, str) else None
    if token_id is None:
        raise InvalidInput(f"tokenizer_config.json: {key} {value!r} is not a token of tokenizer.json")
    return token_id


def placeholder_id(tokenizer: QwenTokenizer) -> int:
    """Id of AUDIO_PLACEHOLDER, whose embeddings are replaced by the audio encoder's output."""
    token_id = tokenizer.backend.token_to_id(AUDIO_PLACEHOLDER)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {AUDIO_PLACEHOLDER} token; load it with load_tokenizer()")
    return token_id


def eos_id(tokenizer: QwenTokenizer) -> int:
    """Generation stops here: <|im_end|> for Qwen3 (SALM's text_eos_id)."""
    return tokenizer.eos_token_id


def pad_id(tokenizer: QwenTokenizer) -> int:
    """Left padding of batched prompts: <|endoftext|> for Qwen3 (SALM's text_pad_id)."""
    return tokenizer.pad_token_id


def asr_prompt_ids(tokenizer: QwenTokenizer, instruction: str = DEFAULT_INSTRUCTION) -> list[int]:
    """Prompt ids of NeMo's "qwen" format: one user turn, then the assistant generation prefix."""
    if not instruction.strip():
        raise InvalidInput("the ASR instruction is empty")
    if AUDIO_PLACEHOLDER in instruction:
        raise InvalidInput(f"the ASR instruction must not contain {AUDIO_PLACEHOLDER}: it is appended after it")
    placeholder_id(tokenizer)  # fail here rather than encode the placeholder as plain text
    text = f"<|im_start|>user\n{instruction} {AUDIO_PLACEHOLDER}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer.encode(text)


def decode(tokenizer: QwenTokenizer, ids: Sequence[int]) -> str:
    """Transcript text of generated ids, without special tokens (eos, pad) or edge whitespace."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
