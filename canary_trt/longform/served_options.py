"""The segmenter options `canary_qwen_long` serves: chosen for a build at export, written into its Triton config
as parameters (one per SegmenterOptions field, named as the field), read back by the model.

A chunk's new-token budget grows with its duration (SegmenterOptions.token_budget) and must fit the build's
max_new_tokens (export.json), so the chunk length follows the build: the longest whole-millisecond duration
whose budget fits, at most the segmenter's default (30 s) and the build's max_audio_seconds. The default
128-token build gets 14 s ((128 - 16 margin) / 8 tokens per second). The lookahead may be at most half a chunk
(the segmenter's rule), so it shrinks with it (7 s at 14 s).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import asdict, fields, replace

from ..contract import Budgets
from ..errors import InvalidInput
from .segmenter import SegmenterOptions


def for_build(budgets: Budgets) -> SegmenterOptions:
    base = SegmenterOptions()
    longest = min(base.max_chunk_ms, round(budgets.max_audio_seconds * 1000))
    # token_budget grows with the duration: the count of durations 1..longest ms that fit is the longest one
    fits = bisect_right(range(1, longest + 1), budgets.max_new_tokens, key=base.token_budget)
    # A budget too small for the segmenter's least lookahead (under ~58 tokens with the defaults): the shortest
    # chunk it accepts; a chunk's budget is then capped at max_new_tokens, and one that uses it all is flagged.
    for ms in range(max(fits, 1), longest + 1):
        try:
            return replace(base, max_chunk_s=ms / 1000, max_lookahead_ms=min(base.max_lookahead_ms, ms // 2),
                           max_new_tokens=budgets.max_new_tokens)  # fmt: skip
        except InvalidInput:
            continue
    raise InvalidInput(f"no long-form chunk length fits max_audio_seconds {budgets.max_audio_seconds:g}")


def to_parameters(options: SegmenterOptions) -> dict[str, str]:
    """Every field that has a value (neg_threshold None: absent, the segmenter derives it)."""
    return {name: str(value) for name, value in asdict(options).items() if value is not None}


def from_parameters(parameters: dict[str, str]) -> SegmenterOptions:
    """The fields present among a model's config parameters (others ignored); an absent field: its default."""
    given = {}
    for field in fields(SegmenterOptions):
        if field.name in parameters:
            kind = int if isinstance(field.default, int) else float  # neg_threshold's default is None: a float
            given[field.name] = kind(parameters[field.name])
    return SegmenterOptions(**given)
