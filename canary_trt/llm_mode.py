"""The model card's LLM mode, text side, at run time: the prompt, the transcript text, reasoning vs answer.

LLM mode: ASR mode (LoRA on) gives the transcript as `model.tokenizer.ids_to_text(ids)`, then the base Qwen3
(`model.llm.disable_adapter()`) answers the user turn f"{question}\\n\\n{transcript}" in NeMo's "qwen" prompt
format; a request without audio sends the question alone. Torch-free like tokenizer.py, whose QwenTokenizer it
uses, so the Triton python models and the clients import it as they are. tests/test_llm_mode.py proves every
piece against NeMo itself.
"""

from __future__ import annotations

from typing import Sequence

from .contract import LlmBudgets
from .errors import InvalidInput
from .tokenizer import QwenTokenizer

REASONING, ANSWER = "reasoning", "answer"  # the two kinds of text (contract.OUTPUT_DELTA_KIND)
THINK_START, THINK_END = "<think>", "</think>"
# NeMo's QwenPromptFormatter: the user turn's template, and the inference prefix it appends after the dialog.
USER_TURN = "<|im_start|>user\n{message}<|im_end|>\n"
INFERENCE_PREFIX = "<|im_start|>assistant\n"
# Qwen3's empty think block (its chat template with enable_thinking=False; NeMo's Qwen3PromptFormatter.NO_THINK_PREFIX).
NO_THINK = "<think>\n\n</think>\n\n"
# The byte bound checked before tokenizing: English and CJK prose run at about 4 bytes per Qwen token, so
# twice that lets any ordinary question of max_question_tokens through while the tokenizer is never handed
# more than 8 bytes per token of budget (8 KiB at the default 1024 tokens).
QUESTION_BYTES_PER_TOKEN = 8


def transcript_text(tokenizer: QwenTokenizer, ids: Sequence[int]) -> str:
    """NeMo's `model.tokenizer.ids_to_text(ids)`: special tokens (<|im_end|>, padding) dropped, and unlike
    tokenizer.decode() no stripping, so a transcript's edge whitespace reaches the LLM prompt as NeMo sends it."""
    return tokenizer.decode(ids, skip_special_tokens=True)


def user_message(question: str, transcript: str | None) -> str:
    """The model card's user turn: the question, then the transcript after a blank line (if there is audio)."""
    return question if transcript is None else f"{question}\n\n{transcript}"


def llm_prompt_ids(tokenizer: QwenTokenizer, question: str, transcript: str | None, enable_thinking: bool = True) -> list[int]:
    """The ids of NeMo's QwenPromptFormatter.encode_dialog for the one user turn, generation prefix included.

    As NeMo does: the turn is tokenized as one string (template with the message substituted), the inference
    prefix as a second one. enable_thinking=False appends Qwen3's empty think block to the prefix string, as
    Qwen3PromptFormatter does; the "qwen" formatter of this checkpoint ignores enable_thinking altogether.
    """
    prefix = INFERENCE_PREFIX if enable_thinking else INFERENCE_PREFIX + NO_THINK
    return tokenizer.encode(USER_TURN.format(message=user_message(question, transcript))) + tokenizer.encode(prefix)


def think_ids(tokenizer: QwenTokenizer) -> tuple[int, int]:
    """Ids of <think> and </think>: Qwen3's added (non-special) tokens. Generated markers are recognised by
    id, never by searching decoded text, which may spell "</think>" out of ordinary tokens."""
    ids = tuple(tokenizer.backend.token_to_id(token) for token in (THINK_START, THINK_END))
    if None in ids:
        raise InvalidInput(f"the tokenizer has no {THINK_START} / {THINK_END} tokens: not a Qwen3 tokenizer")
    return ids  # type: ignore[return-value]


def split_reasoning(tokenizer: QwenTokenizer, ids: Sequence[int]) -> tuple[str | None, str]:
    """(reasoning, answer) of generated ids; StreamingText gives the same text piece by piece.

    The rule: the output has a reasoning part iff its first generated id is <think>. The reasoning is the text
    of the ids after it up to </think>, or to the end when the budget ran out before </think> (the answer is
    then empty); the answer is the text after </think> without the leading newlines Qwen3 writes there.
    Otherwise reasoning is None and everything is answer. Markers elsewhere are ordinary text. Special tokens
    (<|im_end|>) are dropped as transcript_text drops them.
    """
    start, end = think_ids(tokenizer)
    ids = [int(i) for i in ids]
    if not ids or ids[0] != start:
        return None, tokenizer.decode(ids)
    body = ids[1:]
    if end not in body:
        return tokenizer.decode(body), ""
    cut = body.index(end)
    return tokenizer.decode(body[:cut]), tokenizer.decode(body[cut + 1 :]).lstrip("\n")


class StreamingText:
    """split_reasoning as the ids arrive: feed() takes one decoding step's ids (one or more) and returns
    text deltas (kind, text), never empty, at most one per kind; finish() returns the rest. Per kind, the
    deltas concatenate to exactly split_reasoning's part (answer: "" when reasoning runs to the end). Text is
    held back while it ends in U+FFFD, i.e. inside a UTF-8 character whose bytes span tokens; decoding only
    the ids not yet emitted keeps a step's cost independent of the output's length."""

    def __init__(self, tokenizer: QwenTokenizer):
        self._tokenizer = tokenizer
        self._start, self._end = think_ids(tokenizer)
        self._kind: str | None = None  # decided by the first id
        self._pending: list[int] = []  # ids of the current kind not yet emitted
        self._drop_newlines = False  # after </think>, until the answer's first other character

    def feed(self, ids: Sequence[int]) -> list[tuple[str, str]]:
        deltas: list[tuple[str, str]] = []
        for delta in (d for token_id in ids for d in self._push(int(token_id))):
            if deltas and deltas[-1][0] == delta[0]:  # one delta per kind and step
                delta = (delta[0], deltas.pop()[1] + delta[1])
            deltas.append(delta)
        return deltas

    def _push(self, token_id: int) -> list[tuple[str, str]]:
        if self._kind is None:
            self._kind = REASONING if token_id == self._start else ANSWER
            if self._kind == REASONING:
                return []
        elif self._kind == REASONING and token_id == self._end:
            deltas = self._emit(final=True)
            self._kind, self._drop_newlines = ANSWER, True
            return deltas
        self._pending.append(token_id)
        return self._emit(final=False)

    def finish(self) -> list[tuple[str, str]]:
        """What is held back at the end of generation (a character cut by the budget stays U+FFFD)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> list[tuple[str, str]]:
        # Byte-level decoding is UTF-8 over the tokens' bytes, so text emitted up to a complete character
        # is a prefix of the text of all ids: pieces concatenate to the whole.
        text = self._tokenizer.decode(self._pending)
        if not final and text.endswith("\ufffd"):
            return []
        self._pending = []
        if self._drop_newlines:
            text = text.lstrip("\n")
            self._drop_newlines = not text
        return [(self._kind, text)] if text else []


def max_question_bytes(budgets: LlmBudgets) -> int:
    return QUESTION_BYTES_PER_TOKEN * budgets.max_question_tokens


def check_question(tokenizer: QwenTokenizer, question: str, budgets: LlmBudgets) -> None:
    """Refuse a question that is empty, over its byte bound (before tokenizing), carries a control token
    (it would open or close turns of the template, or be taken for the audio), or is over max_question_tokens."""
    if not question.strip():
        raise InvalidInput("the LLM-mode question is empty")
    try:
        size = len(question.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("the LLM-mode question is not valid Unicode text (lone surrogates)") from None
    if size > max_question_bytes(budgets):
        raise InvalidInput(f"the LLM-mode question is {size} bytes, over the {max_question_bytes(budgets)} allowed "
                           f"({QUESTION_BYTES_PER_TOKEN} per token of max_question_tokens {budgets.max_question_tokens})")  # fmt: skip
    for token in control_tokens(tokenizer):
        if token in question:
            raise InvalidInput(f"the LLM-mode question must not contain the control token {token}")
    count = len(tokenizer.encode(question))
    if count > budgets.max_question_tokens:
        raise InvalidInput(f"the LLM-mode question is {count} tokens, over max_question_tokens {budgets.max_question_tokens}")


def control_tokens(tokenizer: QwenTokenizer) -> list[str]:
    """The special added tokens (<|im_start|>, <|im_end|>, the audio placeholder, ...): the ones decoding drops."""
    return sorted(t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special)


def check_context(prompt_tokens: int, new_tokens: int, budgets: LlmBudgets) -> None:
    """Refuse a requested new-token count over max_new_tokens, or that with the prompt overflows max_context_tokens."""
    if not 1 <= new_tokens <= budgets.max_new_tokens:
        raise InvalidInput(f"LLM-mode max_new_tokens {new_tokens} must be between 1 and max_new_tokens {budgets.max_new_tokens}")
    if prompt_tokens + new_tokens > budgets.max_context_tokens:
        raise InvalidInput(f"the LLM-mode prompt of {prompt_tokens} tokens + {new_tokens} new tokens is over "
                           f"max_context_tokens {budgets.max_context_tokens}")  # fmt: skip


def new_token_budget(prompt_tokens: int, requested: int | None, budgets: LlmBudgets) -> int:
    """The new tokens of a request: those it asked for, checked, else default_new_tokens."""
    if requested is None:
        return default_new_tokens(prompt_tokens, budgets)
    check_context(prompt_tokens, requested, budgets)
    return requested


def default_new_tokens(prompt_tokens: int, budgets: LlmBudgets) -> int:
    """The new-token budget of a request that names none: max_new_tokens, or what the context leaves."""
    room = budgets.max_context_tokens - prompt_tokens
    if room < 1:
        raise InvalidInput(f"the LLM-mode prompt of {prompt_tokens} tokens leaves no room for an answer within "
                           f"max_context_tokens {budgets.max_context_tokens}")  # fmt: skip
    return min(budgets.max_new_tokens, room)
