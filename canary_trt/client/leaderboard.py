"""The Hugging Face Open ASR Leaderboard's English protocol as canary-trt-client bench runs it: the eight test
sets, the model card's published numbers, and the leaderboard's per-set and mean arithmetic.

Protocol (huggingface/open_asr_leaderboard at 43e749d37a1764192661282a24c8087a25efb6f0, 2025-07-07: the
`nemo_asr/run_salm.sh` and `run_eval_salm.py` canary-qwen-2.5b was scored with, `normalizer/data_utils.py`,
`normalizer/eval_utils.py`): each set is a config of the Hub dataset `hf-audio/esb-datasets-test-only-sorted`,
streamed; the reference is the first of the columns text, sentence, normalized_text, transcript,
transcription; references that normalize to nothing (or to "ignore time segment in scoring") are dropped;
a set's WER is corpus WER in percent rounded to 2 decimals; the mean WER is the plain mean of those; a set's
RTFx is its audio seconds / its transcription seconds, the overall RTFx total audio / total time. NeMo ran
bf16, batches of 192, max_new_tokens 128 (the server's default here). Later leaderboard commits (2026) moved
to `hf-audio/open-asr-leaderboard` with cleaned sets and no TED-LIUM; this preset keeps the protocol the
published numbers come from.
"""

from __future__ import annotations

from dataclasses import dataclass

HUB_DATASET = "hf-audio/esb-datasets-test-only-sorted"
PRESET = "leaderboard"
TEXT_COLUMNS = ("text", "sentence", "normalized_text", "transcript", "transcription")  # data_utils.get_text's order
IGNORED_REFERENCES = ("", "ignore time segment in scoring")  # data_utils.is_target_text_in_range, after normalizing

# nvidia/canary-qwen-2.5b's model card (README.md model-index, revision 418c32c on huggingface.co), Test WER %.
# The copy read for this showed the first five; SPGISpeech 1.90, TED-LIUM 2.71 and VoxPopuli 5.66 are the card's
# leaderboard row as recorded in docs/MODEL.md, and the eight give the published mean: 45.05 / 8 = 5.63.
PUBLISHED_SOURCE = "nvidia/canary-qwen-2.5b model card (model-index, revision 418c32c) and its leaderboard row"
PUBLISHED_MEAN_WER = 5.63  # the card's and the leaderboard's headline
PUBLISHED_RTFX = 418.0


@dataclass(frozen=True)
class LeaderboardSet:
    name: str  # as the report names it
    config: str
    split: str
    published_wer: float | None  # percent; None: not found in a citable source

    @property
    def spec(self) -> str:
        return f"{HUB_DATASET}:{self.config}:{self.split}"


SETS = (
    LeaderboardSet("AMI", "ami", "test", 10.19),
    LeaderboardSet("Earnings-22", "earnings22", "test", 10.45),
    LeaderboardSet("GigaSpeech", "gigaspeech", "test", 9.43),
    LeaderboardSet("LibriSpeech test-clean", "librispeech", "test.clean", 1.61),
    LeaderboardSet("LibriSpeech test-other", "librispeech", "test.other", 3.1),
    LeaderboardSet("SPGISpeech", "spgispeech", "test", 1.90),
    LeaderboardSet("TED-LIUM", "tedlium", "test", 2.71),
    LeaderboardSet("VoxPopuli", "voxpopuli", "test", 5.66),
)


def preset_specs(root: str = HUB_DATASET) -> list[tuple[str, LeaderboardSet]]:
    """(dataset spec, set) for the eight sets; `root`: the Hub id, or a local copy laid out the same way."""
    return [(f"{root}:{s.config}:{s.split}", s) for s in SETS]


def set_wer_percent(wer: float | None) -> float | None:
    """A set's WER as the leaderboard reports it: percent, 2 decimals."""
    return None if wer is None else round(100 * wer, 2)


def mean_wer_percent(per_set: list[float | None]) -> float | None:
    """The plain mean of the per-set percentages (not a corpus WER over all sets); None if any set has none."""
    if not per_set or any(w is None for w in per_set):
        return None
    return round(sum(per_set) / len(per_set), 2)


def overall_rtfx(audio_seconds: list[float], wall_seconds: list[float]) -> float | None:
    """Total audio over total time (eval_utils.score_results' composite), None when nothing was timed."""
    wall = sum(wall_seconds)
    return round(sum(audio_seconds) / wall, 2) if wall > 0 else None
