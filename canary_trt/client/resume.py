"""The bench's resume file, `partial.jsonl`: every finished request written down as it finishes, so that a
run cut short (a dead server, a crash) is resumed, not repeated.

A header line (the `fingerprint` of the data set, model, token limit and prompt), then one JSON line per
finished request (a `RequestRow`: {concurrency, index, audio, status: done|failed, hypothesis, token_ids,
audio_seconds, latency_seconds, endpoint, error, error_kind}). Lines are appended and flushed as requests
finish; a torn last line is ignored. For each (concurrency, index) the last line counts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput
from .api import Transcription
from .manifest import Utterance
from .results import Clip, Outcome
from .retry import Failure

PARTIAL_NAME = "partial.jsonl"
PARTIAL_SCHEMA = "canary-trt-bench-partial/1"


def fingerprint(utterances: list[Utterance], max_new_tokens: int | None, model: str, prompt: str | None = None) -> dict:
    """What a partial file must match to be resumed: the same clips and references, in the same order,
    the same token limit, prompt and model."""
    digest = hashlib.sha256(json.dumps([[str(u.audio), u.text] for u in utterances]).encode("utf-8")).hexdigest()
    return {"schema": PARTIAL_SCHEMA, "dataset_sha256": digest, "utterances": len(utterances),
            "max_new_tokens": max_new_tokens, "prompt": prompt, "model": model}  # fmt: skip


@dataclass(frozen=True)
class RequestRow:
    """One line of the file: a request at concurrency `concurrency` for utterance `index`, and its outcome."""

    concurrency: int
    index: int
    audio: str
    outcome: Outcome

    def to_json(self) -> dict:
        return {"concurrency": self.concurrency, "index": self.index, "audio": self.audio, **self.outcome.to_json()}


class PartialResults:
    """The file at `path`, read (unless `fresh`) and appended to. `rows`: per (concurrency, index), the JSON
    of its last line."""

    def __init__(self, path: Path, header: dict, fresh: bool = False):
        self.path, self.header = Path(path), header
        self.rows: dict[tuple[int, int], dict] = {}
        if self.path.is_file() and not fresh:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if header != self.header:
            raise InvalidInput(f"{self.path} holds partial results of another data set, model, --max-new-tokens or --prompt: "
                             "run with --fresh to discard them, or use another --out")  # fmt: skip
        for line in lines[1:]:
            try:
                row = json.loads(line)
                self.rows[(int(row["concurrency"]), int(row["index"]))] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line torn by a crash mid-write: that request is simply sent again

    def done(self, level: int) -> dict[int, dict]:
        return {index: row for (lv, index), row in self.rows.items() if lv == level and row["status"] == "done"}

    def transcriptions(self, level: int) -> dict[int, Transcription]:
        """Per utterance index, what was transcribed at `level` in earlier runs."""
        return {index: Outcome.from_json(row).transcription() for index, row in self.done(level).items()}

    def append(self, level: int, clip: Clip, result: Transcription | Failure | str) -> None:
        row = RequestRow(level, clip.index, str(clip.utterance.audio), Outcome.of(result)).to_json()
        self.rows[(level, clip.index)] = row
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
