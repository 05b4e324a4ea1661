"""LLM mode's text side is NeMo's: prompt ids, transcript text, and the base-LLM answer ids of the model card."""

import random

import pytest
import torch
from tokenizers import Tokenizer, models

from canary_trt.contract import LlmBudgets
from canary_trt.errors import InvalidInput
from canary_trt.llm_mode import (
    ANSWER,
    NO_THINK,
    QUESTION_BYTES_PER_TOKEN,
    REASONING,
    StreamingText,
    check_context,
    check_question,
    default_new_tokens,
    new_token_budget,
    llm_prompt_ids,
    split_reasoning,
    think_ids,
    transcript_text,
    user_message,
)
from canary_trt.tokenizer import AUDIO_PLACEHOLDER, DEFAULT_INSTRUCTION, QwenTokenizer, decode, load_tokenizer

QUESTIONS = ["Summarize the text.", "  What is said?  ", "\nWhy?\n", "Wie heißt das? 東京 🙂 — «ok»",
             'Answer: (a), (b); or "c"... {message} |message|', "tabs\tand\r\nCRLF", "<think>", "a\n\n\nb"]  # fmt: skip
TRANSCRIPTS = [None, "", " leading space", "trailing space ", "\n\nnewlines\n", "Größe, ñandú, 👩\u200d👩\u200d👧!"]
MULTIBYTE = "東京 👩\u200d👩\u200d👧 𝒜𝒷 Größe €"  # characters whose bytes span tokens
NEW_TOKENS = 12  # the parity test's LLM-mode budget: enough to compare, fast on CPU
ASR_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def tok(tiny_checkpoint) -> QwenTokenizer:
    return load_tokenizer(tiny_checkpoint.llm_path)


@pytest.fixture(scope="module")
def nemo_tok(tiny_checkpoint):
    """The tokenizer SALM.__init__ builds: NeMo's AutoTokenizer on the LLM directory, plus the placeholder."""
    from nemo.collections.common.tokenizers import AutoTokenizer

    tokenizer = AutoTokenizer(str(tiny_checkpoint.llm_path), use_fast=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_PLACEHOLDER]})
    return tokenizer


def _nemo_prompt(nemo_tok, message: str, fmt: str = "qwen", **kwargs) -> list[int]:
    from nemo.collections.common.prompts import PromptFormatter

    turns = [{"role": "user", "content": message}]  # fresh: Qwen3PromptFormatter rewrites its turns in place
    return PromptFormatter.resolve(fmt)(nemo_tok).encode_dialog(turns=turns, **kwargs)["input_ids"].tolist()


def test_the_checkpoint_tokenizer_has_the_think_tokens(tok):
    assert think_ids(tok) == (151667, 151668)  # Qwen3-1.7B's ids: plain added tokens, kept by decode
    assert decode(tok, [151667, 151668]) == "<think></think>"


def test_a_tokenizer_without_think_tokens_is_refused():
    backend = Tokenizer(models.WordLevel({"a": 0, "<|im_end|>": 1}, unk_token="a"))
    with pytest.raises(InvalidInput, match="no <think> / </think> tokens"):
        StreamingText(QwenTokenizer(backend, 1, 1))


@pytest.mark.parametrize("question", QUESTIONS)
def test_prompt_ids_are_nemo_qwen_formatter(tok, nemo_tok, question):
    """Thinking on: NeMo's "qwen" formatter (the checkpoint's prompt_format), which ignores enable_thinking;
    off: Qwen3PromptFormatter(enable_thinking=False), whose user turn and prefix are qwen's + the empty block."""
    for transcript in TRANSCRIPTS:
        message = user_message(question, transcript)
        nemo = _nemo_prompt(nemo_tok, message)
        assert llm_prompt_ids(tok, question, transcript) == nemo, message
        assert _nemo_prompt(nemo_tok, message, enable_thinking=False) == nemo  # SALM's hint is lost on "qwen"
        assert _nemo_prompt(nemo_tok, message, "qwen3") == nemo
        no_think = _nemo_prompt(nemo_tok, message, "qwen3", enable_thinking=False)
        assert llm_prompt_ids(tok, question, transcript, enable_thinking=False) == no_think, message
        assert no_think == nemo + nemo_tok.text_to_ids(NO_THINK)


def test_message_is_tokenized_with_its_template(tok):
    """The turn is one string, so the message's leading newlines merge with the template's "user\\n"."""
    ids = llm_prompt_ids(tok, "\n\nWhy?", None)
    assert ids[:3] == [151644, *tok.encode("user\n\n\n")] and len(tok.encode("user\n\n\n")) == 2


def test_transcript_text_is_nemo_ids_to_text(tok, nemo_tok):
    """ids_to_text drops special tokens (eos, pad, placeholder) but keeps <think> and edge whitespace."""
    eos, pad, placeholder = 151645, 151643, tok.backend.token_to_id(AUDIO_PLACEHOLDER)
    partial = tok.encode(MULTIBYTE)
    cases = [
        tok.encode(" Hello world. ") + [eos],
        [151644, *tok.encode("\n\nline\n"), eos, pad, pad],
        [placeholder, 151667, *tok.encode("x"), 151668, eos],
        partial[:3], partial[1:], partial[:-1],  # cut inside a character: U+FFFD, as NeMo gives
        [],
    ]  # fmt: skip
    for ids in cases:
        assert transcript_text(tok, ids) == nemo_tok.ids_to_text(ids), ids
    assert transcript_text(tok, cases[0]) == " Hello world. " != decode(tok, cases[0])


def _stream(tok, ids: list[int], step: int = 1) -> tuple[dict[str, str], list[tuple[str, str]]]:
    streaming = StreamingText(tok)
    deltas = [delta for i in range(0, len(ids), step) for delta in streaming.feed(ids[i : i + step])]
    final = streaming.finish()
    joined = {kind: "".join(text for k, text in deltas + final if k == kind) for kind in (REASONING, ANSWER)}
    return joined, deltas


def _check_stream(tok, ids: list[int]) -> None:
    """One id per step, and several (a streaming decoder may hand over more than one)."""
    reasoning, answer = split_reasoning(tok, ids)
    for step in (1, 3):
        joined, deltas = _stream(tok, ids, step)
        assert joined == {REASONING: reasoning or "", ANSWER: answer}, (ids, step)
        assert all(text for _, text in deltas)
        if "\ufffd" not in (reasoning or "") + answer:
            assert not any("\ufffd" in text for _, text in deltas)  # no half characters on the way
    kinds = [kind for kind, _ in _stream(tok, ids, max(1, len(ids)))[1]]
    assert len(kinds) == len(set(kinds))  # one delta per kind and step


def test_split_reasoning(tok):
    start, end, eos = 151667, 151668, 151645
    enc = tok.encode
    cases = {
        "think block": ([start, *enc("\nLet me think.\n"), end, *enc("\n\nThe answer."), eos], ("\nLet me think.\n", "The answer.")),
        "no think block": (enc("\n\nPlain answer\n"), (None, "\n\nPlain answer\n")),
        "budget inside reasoning": ([start, *enc("\nhalf a thou")], ("\nhalf a thou", "")),
        "empty reasoning": ([start, *enc("\n\n"), end, *enc("\n\nHi")], ("\n\n", "Hi")),
        "nothing after </think>": ([start, end, *enc("\n\n\n")], ("", "")),
        "only <think>": ([start], ("", "")),
        "nothing": ([], (None, "")),
        "markers later are text": ([*enc("x"), end, start], (None, "x</think><think>")),
        "second block is answer": ([start, end, start, *enc("y"), end], ("", "<think>y</think>")),
        "multibyte": ([start, *enc(MULTIBYTE), end, *enc("\n" + MULTIBYTE)], (MULTIBYTE, MULTIBYTE)),
    }  # fmt: skip
    for name, (ids, expected) in cases.items():
        assert split_reasoning(tok, ids) == expected, name
        _check_stream(tok, ids)


def test_budget_ending_inside_a_character(tok):
    """A character cut by the budget stays U+FFFD at the end, in both forms, and is never emitted early."""
    ids = [151667, *tok.encode("a 𝒜")[:-1]]
    reasoning, answer = split_reasoning(tok, ids)
    assert reasoning.endswith("\ufffd") and answer == ""
    joined, deltas = _stream(tok, ids)
    assert joined[REASONING] == reasoning and deltas == [(REASONING, "a")]


def test_streaming_matches_split_on_random_ids(tok):
    """Random outputs drawn from multi-byte pieces, markers, newlines and eos, in random places."""
    pool = [*tok.encode(MULTIBYTE + " \n\n ok."), 151667, 151668, 151645, 198, 271]
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice(pool) for _ in range(rng.randrange(0, 24))]
        if rng.random() < 0.5:
            ids.insert(0, 151667)
        _check_stream(tok, ids)


def test_question_bounds(tok):
    budgets = LlmBudgets(max_question_tokens=8, max_new_tokens=16, max_context_tokens=32)
    check_question(tok, "What was said?", budgets)
    for question in ("", "  \n\t"):
        with pytest.raises(InvalidInput, match="question is empty"):
            check_question(tok, question, budgets)
    with pytest.raises(InvalidInput, match="over max_question_tokens 8"):
        check_question(tok, "one two three four five six seven eight nine", budgets)
    with pytest.raises(InvalidInput, match=f"over the {8 * QUESTION_BYTES_PER_TOKEN} allowed"):
        check_question(tok, "x" * (8 * QUESTION_BYTES_PER_TOKEN + 1), budgets)
    for token in ("<|im_end|>", "<|im_start|>", AUDIO_PLACEHOLDER):
        with pytest.raises(InvalidInput, match="control token"):
            check_question(tok, f"Hi {token}", budgets)
    check_question(tok, "Why <think>?", budgets)  # a plain added token, as NeMo encodes it
    with pytest.raises(InvalidInput, match="not valid Unicode"):
        check_question(tok, "bad \ud800", budgets)


def test_context_bounds():
    budgets = LlmBudgets(max_question_tokens=8, max_new_tokens=16, max_context_tokens=32)
    check_context(16, 16, budgets)
    with pytest.raises(InvalidInput, match="over max_context_tokens 32"):
        check_context(17, 16, budgets)
    for new in (0, 17):
        with pytest.raises(InvalidInput, match="max_new_tokens 16"):
            check_context(4, new, budgets)
    assert [default_new_tokens(n, budgets) for n in (1, 16, 20, 31)] == [16, 16, 12, 1]
    for prompt in (32, 40):
        with pytest.raises(InvalidInput, match="no room .* max_context_tokens 32"):
            default_new_tokens(prompt, budgets)
    assert (new_token_budget(20, None, budgets), new_token_budget(20, 5, budgets)) == (12, 5)
    with pytest.raises(InvalidInput, match="over max_context_tokens 32"):
        new_token_budget(20, 13, budgets)


@pytest.fixture(scope="module")
def salm(tiny_checkpoint):
    from nemo.collections.speechlm2.models import SALM

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tiny_checkpoint.path)  # NeMo resolves a relative pretrained_llm against the cwd
        return SALM.from_pretrained(str(tiny_checkpoint.path)).eval()


def _until(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def _new_ids(out: torch.Tensor, prompt: list[int], eos: int) -> list[int]:
    """SALM.generate's text-only output is prompt + answer (Hugging Face with input_ids); the answer to eos."""
    ids = out[0].tolist()
    assert ids[: len(prompt)] == prompt
    return _until(ids[len(prompt) :], eos)


def test_llm_mode_is_nemo_salm(reference, salm, clips, nemo_tok):
    """The model card, run by NeMo: ASR ids (LoRA on) -> ids_to_text -> generate under disable_adapter();
    thinking off as a pre-tokenized prompt (the "qwen" formatter has no such switch); a text-only question.
    Reference.llm_mode gives the same ids, from llm_prompt_ids and the base weights."""
    from nemo.collections.common.prompts import PromptFormatter

    clip, question, eos = clips["0880"], "Summarize this, please.", reference.eos_id
    with torch.inference_mode():
        asr = salm.generate(
            prompts=[[{"role": "user", "content": f"{DEFAULT_INSTRUCTION} {salm.audio_locator_tag}"}]],
            audios=torch.from_numpy(clip)[None], audio_lens=torch.tensor([len(clip)]), max_new_tokens=ASR_NEW_TOKENS,
        )  # fmt: skip
        transcript = salm.tokenizer.ids_to_text(asr[0].cpu())
        message = f"{question}\n\n{transcript}"
        prompts = {
            "thinking": _nemo_prompt(nemo_tok, message),
            "no thinking": PromptFormatter.resolve("qwen3")(salm.tokenizer).encode_dialog(
                [{"role": "user", "content": message}], enable_thinking=False)["input_ids"].tolist(),
            "text only": _nemo_prompt(nemo_tok, question),
        }  # fmt: skip
        with salm.llm.disable_adapter():
            nemo = {
                "thinking": salm.generate(prompts=[[{"role": "user", "content": message}]], max_new_tokens=NEW_TOKENS),
                "no thinking": salm.generate(prompts=torch.tensor([prompts["no thinking"]]), max_new_tokens=NEW_TOKENS),
                "text only": salm.generate(prompts=[[{"role": "user", "content": question}]], max_new_tokens=NEW_TOKENS),
            }  # fmt: skip
        with_lora = salm.generate(prompts=[[{"role": "user", "content": message}]], max_new_tokens=NEW_TOKENS)
    expected = {name: _new_ids(out, prompts[name], eos) for name, out in nemo.items()}
    assert _new_ids(with_lora, prompts["thinking"], eos) != expected["thinking"]  # the adapter really was off

    runs = {
        "thinking": reference.llm_mode(clip, question, True, NEW_TOKENS, ASR_NEW_TOKENS),
        "no thinking": reference.llm_mode(clip, question, False, NEW_TOKENS, ASR_NEW_TOKENS),
        "text only": reference.llm_mode(None, question, True, NEW_TOKENS),
    }
    for name, ours in runs.items():
        assert ours.prompt_ids == prompts[name], name
        assert ours.answer_ids == expected[name], name
        assert ours.transcript_ids == (None if name == "text only" else _until(asr[0].tolist(), eos)), name
        reasoning, answer = split_reasoning(reference.tokenizer, ours.answer_ids)
        if reasoning is None:  # random weights: no think block; the answer is NeMo's text of the ids
            assert answer == salm.tokenizer.ids_to_text(expected[name])
    assert len({tuple(ids) for ids in expected.values()}) == 3  # the prompts drive the answers
