import json
import re
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from canary_trt.contract import LIBRIVOX_DIR
from canary_trt.tokenizer import (
    AUDIO_PLACEHOLDER,
    DEFAULT_INSTRUCTION,
    QwenTokenizer,
    asr_prompt_ids,
    decode,
    eos_id,
    load_tokenizer,
    pad_id,
    placeholder_id,
)
from canary_trt.tokenizer_build import qwen_vocab_file, write_qwen3_tokenizer

# What the real Qwen3-1.7B tokenizer (plus SALM's placeholder) gives.
ASR_PROMPT_IDS = [151644, 872, 198, 3167, 3114, 279, 2701, 25, 220, 151669, 151645, 198, 151644, 77091, 198]
QWEN3_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]  # fmt: skip
QWEN3_SPECIAL_IDS = range(151643, 151657)
QWEN2_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

TRANSCRIPTS = LIBRIVOX_DIR / "transcription"
EXTRA_TEXTS = [
    "Café naïve — 1234 €",
    "Mr. O'Neil's 3rd flight (No. 42) left at 9:45 p.m.; it's 1,024 km away!",
    "Größe, ñandú, 東京, Привет — «quoted» “text”.",
]


def _corpus() -> list[str]:
    """LibriVox transcripts without the <s> </s> markers and (utterance id), plus EXTRA_TEXTS."""
    lines = TRANSCRIPTS.read_text().splitlines() if TRANSCRIPTS.is_file() else []
    sentences = [re.sub(r"^<s>\s*|\s*</s>\s*\(.*\)$", "", line).strip() for line in lines]
    return [s for s in sentences if s] + EXTRA_TEXTS


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qwen3")
    start = time.perf_counter()
    write_qwen3_tokenizer(out)
    print(f"write_qwen3_tokenizer: {time.perf_counter() - start:.2f} s")
    return out


@pytest.fixture(scope="session")
def tok(qwen3_dir):
    return load_tokenizer(qwen3_dir)


def _encode(tok, text: str) -> list[int]:
    return tok.encode(text)


def test_asr_prompt_ids(tok):
    assert asr_prompt_ids(tok) == ASR_PROMPT_IDS
    assert asr_prompt_ids(tok, DEFAULT_INSTRUCTION) == ASR_PROMPT_IDS


def test_special_ids(tok):
    assert placeholder_id(tok) == 151669
    assert eos_id(tok) == 151645
    assert pad_id(tok) == 151643
    assert tok.backend.get_vocab_size(with_added_tokens=True) == 151670


def test_hello_world(tok):
    assert _encode(tok, "Hello world") == [9707, 1879]


def test_custom_instruction_has_one_placeholder(tok):
    ids = asr_prompt_ids(tok, "Transcribe the following in Polish:")
    assert ids.count(151669) == 1
    assert ids[:3] == ASR_PROMPT_IDS[:3] and ids[-6:] == ASR_PROMPT_IDS[-6:]


@pytest.mark.parametrize("instruction", ["", "   \n", f"Transcribe {AUDIO_PLACEHOLDER}"])
def test_bad_instruction(tok, instruction):
    with pytest.raises(ValueError):
        asr_prompt_ids(tok, instruction)


def test_prompt_needs_placeholder_token(qwen3_dir, tok):
    plain = QwenTokenizer(Tokenizer.from_file(str(qwen3_dir / "tokenizer.json")), eos_id(tok), pad_id(tok))
    with pytest.raises(ValueError, match="load_tokenizer"):
        asr_prompt_ids(plain)


def test_added_tokens(tok):
    ids = list(range(151643, 151669))
    assert [tok.backend.id_to_token(i) for i in ids] == QWEN3_ADDED
    decoder = tok.backend.get_added_tokens_decoder()
    assert {i: decoder[i].special for i in ids} == {i: i in QWEN3_SPECIAL_IDS for i in ids}
    assert decoder[151669].content == AUDIO_PLACEHOLDER and decoder[151669].special


@pytest.mark.parametrize("text", _corpus())
def test_decode_round_trip(tok, text):
    assert decode(tok, _encode(tok, text)) == text


def test_decode_drops_special_tokens(tok):
    text_ids = _encode(tok, "Hello world")
    ids = [151644, *QWEN3_SPECIAL_IDS, 151669, *text_ids, 151645, 151643, 151643]
    assert decode(tok, ids) == "Hello world"
    assert decode(tok, ASR_PROMPT_IDS) == f"user\n{DEFAULT_INSTRUCTION} \nassistant"


def test_matches_tiktoken_bpe(tok):
    """Same ids as the vocabulary's own BPE (tiktoken, Qwen's regex) on text without added tokens."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(qwen_vocab_file()))
    reference = tiktoken.Encoding("qwen", pat_str=QWEN2_REGEX, mergeable_ranks=ranks, special_tokens={})
    text = "\n".join(_corpus()) + "\n\n  def f(x):\n\treturn x**2  # 12345\r\n"
    assert _encode(tok, text) == reference.encode_ordinary(text)


def test_written_files(qwen3_dir, tok):
    assert sorted(p.name for p in qwen3_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((qwen3_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == (
        None,
        "<|im_end|>",
        "<|endoftext|>",
        None,
    )
    assert config["model_max_length"] == 131072
    assert not config["add_prefix_space"] and not config["split_special_tokens"]
    assert not config["clean_up_tokenization_spaces"]

    spec = json.loads((qwen3_dir / "tokenizer.json").read_text())
    assert spec["normalizer"] == {"type": "NFC"}
    split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == QWEN2_REGEX and split["behavior"] == "Isolated"
    assert not byte_level["add_prefix_space"] and not byte_level["use_regex"]
    assert spec["decoder"]["type"] == "ByteLevel"
    assert len(spec["model"]["vocab"]) == 151643 and not spec["model"]["ignore_merges"]
    # The placeholder is added at load time only, as with the real Qwen3 directory.
    assert [t["content"] for t in spec["added_tokens"]] == QWEN3_ADDED

    # Consumers that read tokenizer.json directly get the same ids (bar the placeholder).
    raw = Tokenizer.from_file(str(qwen3_dir / "tokenizer.json"))
    text = "<|im_start|>user\nHello world, 1234 €<|im_end|>\n"
    assert raw.encode(text, add_special_tokens=False).ids == _encode(tok, text)


def test_same_as_transformers_auto_tokenizer(qwen3_dir, tok):
    """The runtime tokenizer (plain `tokenizers`) against what transformers builds from the same files with
    SALM's placeholder: the same ids, special ids and decoded text, so dropping transformers from serving
    changes nothing."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(qwen3_dir, local_files_only=True)
    hf.add_special_tokens({"additional_special_tokens": [AUDIO_PLACEHOLDER]})
    assert (placeholder_id(tok), eos_id(tok), pad_id(tok)) == (
        hf.convert_tokens_to_ids(AUDIO_PLACEHOLDER), hf.eos_token_id, hf.pad_token_id)  # fmt: skip
    texts = [*_corpus(), "<|im_start|>user\nHi <think>x</think> <|audioplaceholder|><|im_end|>\n", "\n\n  \t 12345 ..."]
    for text in texts:
        ids = _encode(tok, text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert decode(tok, ids) == hf.decode(ids, skip_special_tokens=True).strip(), text
    special = [151644, *QWEN3_SPECIAL_IDS, 151667, 151669, *_encode(tok, "Hello world"), 151645, 151643]
    assert decode(tok, special) == hf.decode(special, skip_special_tokens=True).strip()
    for instruction in (DEFAULT_INSTRUCTION, "Transcribe the following in Polish:"):
        assert asr_prompt_ids(tok, instruction) == hf.encode(
            f"<|im_start|>user\n{instruction} {AUDIO_PLACEHOLDER}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)


def test_write_is_deterministic(qwen3_dir, tmp_path):
    write_qwen3_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (qwen3_dir / name).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("instruction", [DEFAULT_INSTRUCTION, "Transcribe the following in Polish:"])
def test_same_ids_as_nemo_prompt_formatter(qwen3_dir, tok, instruction):
    from nemo.collections.common.prompts import PromptFormatter
    from nemo.collections.common.tokenizers import AutoTokenizer as NemoAutoTokenizer

    # As SALM.__init__ builds its tokenizer and SALM.generate encodes a prompt.
    nemo_tok = NemoAutoTokenizer(str(qwen3_dir), use_fast=True)
    nemo_tok.add_special_tokens({"additional_special_tokens": [AUDIO_PLACEHOLDER]})
    formatter = PromptFormatter.resolve("qwen")(nemo_tok)
    turns = [{"role": "user", "slots": {"message": f"{instruction} {AUDIO_PLACEHOLDER}"}}]
    assert formatter.encode_dialog(turns=turns)["input_ids"].tolist() == asr_prompt_ids(tok, instruction)
    assert nemo_tok.token_to_id(AUDIO_PLACEHOLDER) == placeholder_id(tok)
