"""What became of each clip in a benchmark pass, and the pass's numbers: the rows of `report.json`.

A request's result is a `Transcription` or the reason it failed (a `retry.Failure`, or any text: its kind
is then "error"). `Outcome` is that result as a row's fields, shared by the report's utterance rows
(`UtteranceRow`) and the resume file's lines (`resume.RequestRow`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .api import Segment, Transcription
from .manifest import Utterance
from .metrics import WordErrors, corpus_errors, percentiles, rtfx, word_errors
from .retry import Failure


@dataclass
class Clip:
    index: int
    utterance: Utterance
    samples: np.ndarray | None  # None: the audio could not be read (or, streamed, was let go once sent)
    error: Failure | str | None = None  # why the audio could not be read


@dataclass(frozen=True)
class Outcome:
    """One request's result as row fields: status "done" with the transcription's, or "failed" with the
    error and its kind."""

    status: str
    hypothesis: str | None = None
    token_ids: list[int] | None = None
    audio_seconds: float | None = None
    latency_seconds: float | None = None
    endpoint: str | None = None
    error: str | None = None
    error_kind: str | None = None
    # the transcription's segments without their ids (token_ids is theirs concatenated): start_s, end_s,
    # text, tokens (how many), truncated
    segments: list[dict] | None = None

    @classmethod
    def of(cls, result: Transcription | Failure | str) -> Outcome:
        if isinstance(result, Transcription):
            segments = [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text, "tokens": len(s.token_ids),
                         "truncated": s.truncated} for s in result.segments]  # fmt: skip
            return cls("done", result.text, result.token_ids, result.audio_seconds, result.latency_seconds,
                       result.endpoint, segments=segments)  # fmt: skip
        return cls("failed", error=str(result), error_kind=getattr(result, "kind", "error"))

    @classmethod
    def from_json(cls, row: dict) -> Outcome:
        """The outcome fields of a row (other keys are ignored)."""
        return cls(**{f.name: row.get(f.name) for f in fields(cls)})

    def transcription(self) -> Transcription:
        """A done outcome's transcription back (as `of` took it)."""
        ids, segments = list(self.token_ids), []
        for s in self.segments or []:
            segments.append(Segment(s["start_s"], s["end_s"], s["text"], ids[:s["tokens"]], s["truncated"]))
            ids = ids[s["tokens"]:]
        return Transcription(self.hypothesis, list(self.token_ids), float(self.audio_seconds),
                             float(self.latency_seconds), self.endpoint, segments)  # fmt: skip

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class UtteranceRow:
    """A pass's line for one utterance in report.json (times rounded)."""

    index: int
    audio: str
    reference: str
    outcome: Outcome
    resumed: bool = False  # done in an earlier run, not sent in this one
    word_errors: WordErrors | None = None  # of a done one

    def to_json(self) -> dict:
        o = self.outcome
        rounded = replace(o, audio_seconds=_round(o.audio_seconds, 3), latency_seconds=_round(o.latency_seconds))
        return {
            "index": self.index, "audio": self.audio, "reference": self.reference, **rounded.to_json(),
            "resumed": self.resumed, "generated_tokens": None if o.token_ids is None else len(o.token_ids),
            "word_errors": None if self.word_errors is None else self.word_errors.to_json(),
        }  # fmt: skip


def summarize_pass(level, warmup, wall, clips, outcomes, triton, resumed=frozenset(), triton_by_endpoint=None) -> dict:
    """`outcomes`: per clip, its Transcription or why it failed. `resumed`: indices done in an earlier run;
    their WER counts, their timing does not. `triton_by_endpoint`: per endpoint URL, its statistics delta,
    or why there is none."""
    done = [(clip, outcome) for clip, outcome in zip(clips, outcomes) if isinstance(outcome, Transcription)]
    timed = [outcome for clip, outcome in done if clip.index not in resumed]
    answered = Counter(outcome.endpoint for outcome in timed if outcome.endpoint)
    errors = {clip.index: word_errors(clip.utterance.text, outcome.text) for clip, outcome in done}
    audio_seconds = sum(outcome.audio_seconds for outcome in timed)
    latencies = [outcome.latency_seconds for outcome in timed]
    corpus = corpus_errors(list(errors.values()))
    segments = [s for _, outcome in done for s in outcome.segments]
    failed = [o for o in outcomes if not isinstance(o, Transcription)]
    reasons = Counter(getattr(o, "kind", "error") for o in failed)
    rows = [UtteranceRow(c.index, str(c.utterance.audio), c.utterance.text, Outcome.of(o),
                         isinstance(o, Transcription) and c.index in resumed, errors.get(c.index))
            for c, o in zip(clips, outcomes)]  # fmt: skip
    return {
        "concurrency": level,
        "warmup_requests": warmup,
        "done": len(done),
        "failed": len(failed),
        "resumed": len(done) - len(timed),
        "sent": sum(1 for c in clips if c.error is None and c.index not in resumed),  # readable, not resumed
        "failed_by_kind": dict(sorted(reasons.items())),
        "wall_seconds": round(wall, 4),
        "audio_seconds": round(audio_seconds, 3),
        "rtfx": round(rtfx(audio_seconds, wall), 3) if wall > 0 else None,
        "latency_seconds": {
            **{k: _round(v) for k, v in percentiles(latencies).items()},
            "mean": _round(float(np.mean(latencies)) if latencies else None),
            "max": _round(max(latencies, default=None)),
        },
        "wer": {"wer": corpus.wer, **corpus.to_json()},
        "segments": len(segments),  # of the done utterances (a clip through the ensemble is one)
        # reached their new-token budget (text cut there); None: some budget was the server's default, not known
        "truncated_segments": None if any(s.truncated is None for s in segments) else sum(s.truncated for s in segments),
        "requests_by_endpoint": dict(sorted(answered.items())),  # answered in this run
        "triton": triton,
        "triton_by_endpoint": triton_by_endpoint or {},
        "utterances": [row.to_json() for row in rows],
    }


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(value, digits)
