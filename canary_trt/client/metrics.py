"""WER, RTFx and latency percentiles, computed as the Open ASR Leaderboard does.

WER: both sides go through the leaderboard's English normalizer (`normalize`: whisper_normalizer's
EnglishTextNormalizer made equal to the leaderboard's copy of Whisper's), then jiwer aligns words; the corpus
WER is total errors / total reference words (not a mean of per-utterance WERs). RTFx: audio seconds / wall seconds. Percentiles: numpy's default linear
interpolation between closest ranks (Hyndman & Fan type 7), e.g. p50 of [1, 2, 3, 4] = 2.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PERCENTILE_METHOD = "numpy.percentile, method='linear' (Hyndman & Fan type 7)"
NORMALIZER = ("the Open ASR Leaderboard's EnglishTextNormalizer (whisper_normalizer.english's, less its kinda/sorta/"
              "dunno/cause expansions, plus mm -> hmm)")

# The leaderboard scores with its own copy of Whisper's normalizer (huggingface/open_asr_leaderboard
# normalizer/normalizer.py + english_abbreviations.py, unchanged from 754a8dc up to 43e749d3 of 2025-07-07, the
# scripts canary-qwen-2.5b was scored with). whisper_normalizer 0.1.15 behaves the same on numbers, spellings and
# contractions but for these: it expands four colloquialisms the leaderboard leaves alone, and lacks one
# spelling entry the leaderboard has. (Later leaderboard commits, 2026, changed the normalizer again.)
_NOT_IN_LEADERBOARD = (r"\bkinda\b", r"\bsorta\b", r"\bdunno\b", r"\bcause\b")
_LEADERBOARD_SPELLINGS = {"mm": "hmm"}


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    normalizer = EnglishTextNormalizer()
    for pattern in _NOT_IN_LEADERBOARD:
        del normalizer.replacers[pattern]  # KeyError if whisper_normalizer changes: re-check parity then
    normalizer.standardize_spellings.mapping.update(_LEADERBOARD_SPELLINGS)
    return normalizer


def normalize(text: str) -> str:
    """Lower case, no punctuation, spelled-out numbers as digits, British spellings as American."""
    return _normalizer()(text)


@dataclass(frozen=True)
class WordErrors:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_words: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float | None:
        """None for an empty reference: no rate exists, but its insertions still count in a corpus."""
        return self.errors / self.reference_words if self.reference_words else None

    def to_json(self) -> dict:
        return {"errors": self.errors, "substitutions": self.substitutions, "deletions": self.deletions,
                "insertions": self.insertions, "reference_words": self.reference_words}  # fmt: skip

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.substitutions + other.substitutions, self.deletions + other.deletions,
            self.insertions + other.insertions, self.reference_words + other.reference_words,
        )  # fmt: skip


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Word alignment of the normalized texts."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    aligned = jiwer.process_words(ref, hyp)
    return WordErrors(aligned.substitutions, aligned.deletions, aligned.insertions, len(ref.split()))


def corpus_errors(per_utterance: list[WordErrors]) -> WordErrors:
    """Errors and reference words summed over a corpus; its `.wer` is the corpus WER."""
    return sum(per_utterance, WordErrors())


def rtfx(audio_seconds: float, wall_seconds: float) -> float:
    """Inverse real-time factor: seconds of audio transcribed per second of wall time."""
    if wall_seconds <= 0:
        raise ValueError(f"wall time must be positive, got {wall_seconds}")
    return audio_seconds / wall_seconds


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p90": ..., "p99": ...} by linear interpolation; None for each when `values` is empty."""
    if not values:
        return {f"p{p}": None for p in points}
    return {f"p{p}": float(v) for p, v in zip(points, np.percentile(values, points, method="linear"))}
