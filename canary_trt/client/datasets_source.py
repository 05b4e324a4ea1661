"""Evaluation sets read with the `datasets` library: a Hub id, a local folder `load_dataset` reads (parquet
files, with a README's `configs:` for named configs, as the Hub lays them out), or a folder written by
`save_to_disk`. Spec: `ID_OR_PATH[:CONFIG[:SPLIT]]` (split default "test").

Always streamed, one sample at a time: nothing needs the whole set on disk or in memory. The audio column is
cast to `Audio(decode=False)`, so `datasets` hands over the encoded bytes and the client's own loader
(`audio.load_audio`: soundfile + soxr to 16 kHz mono) decodes them, as it decodes files. References are
chosen and filtered as the leaderboard does (`leaderboard.py`); `max_samples` takes the first N rows before
that filter, as its `--max_eval_samples` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import load_audio
from ..contract import MAX_LONG_AUDIO_SECONDS
from ..errors import InvalidInput
from .leaderboard import IGNORED_REFERENCES, TEXT_COLUMNS
from .manifest import Utterance
from .metrics import normalize
from .retry import UNREADABLE, Failure

AUDIO_COLUMN = "audio"
DEFAULT_SPLIT = "test"


class DatasetError(InvalidInput):
    """A data set that cannot be used, naming it and what is wrong."""


@dataclass(frozen=True)
class DatasetSpec:
    path: str  # a Hub id or a local folder
    config: str | None = None
    split: str = DEFAULT_SPLIT

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        path, *rest = text.split(":")
        if not path or len(rest) > 2 or any(not part for part in rest):
            raise DatasetError(f"dataset {text!r}: expected ID_OR_PATH[:CONFIG[:SPLIT]]")
        return cls(path, rest[0] if rest else None, rest[1] if len(rest) > 1 else DEFAULT_SPLIT)

    @property
    def label(self) -> str:
        return ":".join([self.path, *([self.config] if self.config else []), self.split])

    @property
    def slug(self) -> str:
        """A folder name for this set's report and resume file."""
        return re.sub(r"[^\w.-]+", "_", "-".join(filter(None, [Path(self.path).name, self.config, self.split])))


@dataclass
class Sample:
    index: int  # position among the samples kept (after the reference filter)
    utterance: Utterance  # audio: the sample's id (or row number) under the set's label, for the report
    audio: bytes | str | None  # encoded bytes, or a file path where the dataset stores only that

    def decode(self):
        """16 kHz mono float32, or the Failure that says why not."""
        try:
            if self.audio is None:
                raise ValueError(f"{self.utterance.audio}: the sample has no audio bytes or path")
            return load_audio(self.audio, max_seconds=MAX_LONG_AUDIO_SECONDS)
        except (OSError, ValueError) as e:  # AudioError is a ValueError
            return Failure(f"{self.utterance.audio}: {e}", UNREADABLE)


@dataclass
class DatasetSource:
    """One set, re-readable from the start (each concurrency level streams it again)."""

    spec: DatasetSpec
    max_samples: int | None = None
    skipped: int = field(default=0, init=False)  # references dropped by the filter, on the last full read

    def samples(self) -> Iterator[Sample]:
        dataset = _open(self.spec)
        if self.max_samples is not None:
            dataset = dataset.take(self.max_samples)
        text_column = _text_column(self.spec, dataset)
        kept = skipped = 0
        for row_number, row in enumerate(dataset):
            reference = str(row[text_column] or "")
            if normalize(reference).strip() in IGNORED_REFERENCES:
                skipped += 1
                continue
            audio = row[AUDIO_COLUMN] or {}
            name = f"{self.spec.label}/{row.get('id', row_number)}"
            yield Sample(kept, Utterance(Path(name), reference), audio.get("bytes") or audio.get("path"))
            kept += 1
        self.skipped = skipped


def _open(spec: DatasetSpec):
    """The split as an IterableDataset with undecoded audio; a Hub id and a local parquet folder take the same
    `load_dataset` call, a `save_to_disk` folder is opened memory-mapped and iterated the same way."""
    import datasets

    local = Path(spec.path).expanduser()
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():  # save_to_disk's layout
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if spec.split not in loaded:
                    raise DatasetError(f"dataset {spec.label}: no split {spec.split!r} (it has {', '.join(loaded)})")
                loaded = loaded[spec.split]
            dataset = loaded.to_iterable_dataset()
        else:
            dataset = datasets.load_dataset(spec.path, spec.config, split=spec.split, streaming=True)
    except DatasetError:
        raise
    except (ValueError, FileNotFoundError, ConnectionError) as e:  # unknown config/split, no such id or folder, offline
        raise DatasetError(f"dataset {spec.label}: {e}") from None
    columns = list(dataset.features or {})
    if AUDIO_COLUMN not in columns:
        raise DatasetError(f"dataset {spec.label}: no {AUDIO_COLUMN!r} column (it has {', '.join(columns) or 'none'})")
    return dataset.cast_column(AUDIO_COLUMN, datasets.Audio(decode=False))


def _text_column(spec: DatasetSpec, dataset) -> str:
    columns = list(dataset.features or {})
    for name in TEXT_COLUMNS:
        if name in columns:
            return name
    raise DatasetError(f"dataset {spec.label}: no reference column (one of {', '.join(TEXT_COLUMNS)}); it has "
                       f"{', '.join(columns)}")  # fmt: skip
