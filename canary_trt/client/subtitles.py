"""A transcription's segments as subtitles: SRT (the `srt` library) and WebVTT (`webvtt-py`), one cue per
segment with text, in order. A cue's text is the segment's on one line (whitespace runs made one space);
"-->" in it becomes "->" (a WebVTT cue may not hold it); segments without text are left out (neither format
has an empty cue)."""

from __future__ import annotations

from datetime import timedelta

from .tensors import Segment

FORMATS = ("srt", "vtt")


def cue_text(segment: Segment) -> str:
    return " ".join(segment.text.split()).replace("-->", "->")


def _cues(segments: list[Segment]) -> list[tuple[float, float, str]]:
    return [(s.start_s, s.end_s, cue_text(s)) for s in segments if cue_text(s)]


def to_srt(segments: list[Segment]) -> str:
    import srt

    return srt.compose([srt.Subtitle(i, timedelta(seconds=start), timedelta(seconds=end), text)
                        for i, (start, end, text) in enumerate(_cues(segments), 1)])  # fmt: skip


def _vtt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def to_vtt(segments: list[Segment]) -> str:
    import webvtt

    captions = [webvtt.Caption(start=_vtt_time(start), end=_vtt_time(end), text=text)
                for start, end, text in _cues(segments)]  # fmt: skip
    return webvtt.WebVTT(captions=captions).content


def render(segments: list[Segment], fmt: str) -> str:
    return {"srt": to_srt, "vtt": to_vtt}[fmt](segments)
