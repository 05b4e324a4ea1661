"""Evaluation sets: NeMo JSONL manifests, folders of `x.wav` + `x.txt`, and the LibriVox sample clips.

A NeMo manifest has one JSON object per line with `audio_filepath`, `text` and (optional here) `duration`;
relative audio paths are resolved against the manifest's folder. Every problem is reported with the file
and line it comes from, before any audio is sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..contract import LIBRIVOX_DIR
from ..errors import InvalidInput

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
REQUIRED_KEYS = ("audio_filepath", "text")


class ManifestError(InvalidInput):
    """A data set that cannot be used, naming the file (and line) at fault."""


@dataclass(frozen=True)
class Utterance:
    audio: Path
    text: str  # the reference transcript
    duration: float | None = None  # as the manifest states it; measurements use the decoded audio


def find_audio(folder: str | Path) -> list[Path]:
    """Every wav/flac/ogg file under `folder` (recursively), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"not a directory: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def read_manifest(path: str | Path) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    utterances = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        for key in REQUIRED_KEYS:
            if key not in entry:
                raise ManifestError(f"{where}: missing key {key!r}")
        audio = path.parent / Path(str(entry["audio_filepath"])).expanduser()
        if not audio.is_file():
            raise ManifestError(f"{where}: audio file not found: {audio}")
        duration = entry.get("duration")
        if duration is not None and not isinstance(duration, (int, float)):
            raise ManifestError(f"{where}: 'duration' must be a number of seconds, got {duration!r}")
        utterances.append(Utterance(audio, str(entry["text"]), duration))
    if not utterances:
        raise ManifestError(f"manifest has no entries: {path}")
    return utterances


def read_audio_dir(folder: str | Path) -> list[Utterance]:
    """Each audio file with the transcript in the `.txt` file of the same name beside it.

    An audio file without its transcript is an error, not skipped: a benchmark that silently ran on a
    subset would report numbers for a different set.
    """
    audio = find_audio(folder)
    if not audio:
        raise ManifestError(f"no {'/'.join(s[1:] for s in AUDIO_SUFFIXES)} files in {folder}")
    unpaired = [p for p in audio if not p.with_suffix(".txt").is_file()]
    if unpaired:
        listed = ", ".join(str(p) for p in unpaired[:5])
        if len(unpaired) > 5:
            listed += f" and {len(unpaired) - 5} more"
        raise ManifestError(f"{len(unpaired)} audio file(s) in {folder} have no .txt transcript beside them: {listed}")
    return [Utterance(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in audio]


def write_manifest(path: str | Path, utterances: list[Utterance]) -> Path:
    """NeMo JSONL with absolute audio paths; a missing duration is read from the audio file's header."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for u in utterances:
        duration = u.duration if u.duration is not None else sf.info(str(u.audio)).duration
        entry = {"audio_filepath": str(u.audio.resolve()), "duration": round(duration, 3), "text": u.text}
        lines.append(json.dumps(entry, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_SPHINX_LINE = re.compile(r"^<s>\s*(?P<text>.*?)\s*</s>\s*\((?P<id>[^)]+)\)\s*$")


def librivox_utterances(folder: str | Path = LIBRIVOX_DIR) -> list[Utterance]:
    """The clips listed in the folder's `transcription` file (`<s> text </s> (utterance-id)` lines)."""
    folder = Path(folder)
    listing = folder / "transcription"
    if not listing.is_file():
        raise ManifestError(f"{listing} not found: install Debian's pocketsphinx-testdata")
    utterances = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = _SPHINX_LINE.match(line.strip())
        if not match:
            raise ManifestError(f"{listing}, line {number}: expected '<s> text </s> (utterance-id)'")
        audio = folder / f"{match['id']}.wav"
        if not audio.is_file():
            raise ManifestError(f"{listing}, line {number}: audio file not found: {audio}")
        utterances.append(Utterance(audio, match["text"].lower()))
    return utterances
