"""The check's audio: real speech (Debian's LibriVox test clips) when installed, else seeded speech-like
synthesis, so that `prepare` runs in any image. The samples themselves are stored beside check.json: the
GPU image has neither the clips nor soundfile, and its check must feed exactly what ONNX Runtime saw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import LIBRIVOX_DIR, SAMPLE_RATE

TRANSCRIBE_CLIPS = 3  # real utterances through canary_qwen: a few, each a separate request
SYNTHETIC_SECONDS = (4.0, 7.0, 10.0)  # when LibriVox is absent
ENCODER_SECONDS = (1.0, 20.0, 40.0)  # the engine profile's short end, its optimum, its maximum


@dataclass(frozen=True)
class Clip:
    name: str  # file-name safe: "0870", "speech-1", "40s"
    source: str  # where the samples came from: paths, or "synthetic speech, seed N"
    samples: np.ndarray  # float32, 16 kHz mono

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def librivox_paths(folder: Path = LIBRIVOX_DIR) -> list[Path]:
    return sorted(folder.glob("*.wav")) if folder.is_dir() else []


def transcribe_clips(folder: Path = LIBRIVOX_DIR) -> list[Clip]:
    """The first few LibriVox utterances, each whole; or synthesized ones of a few seconds."""
    paths = librivox_paths(folder)[:TRANSCRIBE_CLIPS]
    if paths:
        from ..audio import load_audio  # soundfile + soxr: the CPU image only

        return [Clip(p.stem.rsplit("-", 1)[-1], str(p), load_audio(p)) for p in paths]
    return [Clip(f"speech-{seed}", f"synthetic speech, seed {seed}", synthetic_speech(seconds, seed))
            for seed, seconds in enumerate(SYNTHETIC_SECONDS, start=1)]  # fmt: skip


def encoder_clips(folder: Path = LIBRIVOX_DIR) -> list[Clip]:
    """1 s, 20 s and 40 s: all LibriVox utterances joined (repeated to length), or synthesis."""
    paths = librivox_paths(folder)
    if paths:
        from ..audio import load_audio

        speech = np.concatenate([load_audio(p) for p in paths])
        source = f"LibriVox {', '.join(p.name for p in paths)} joined, repeated to length"
        return [Clip(f"{s:g}s", source, _repeat(speech, round(s * SAMPLE_RATE))) for s in ENCODER_SECONDS]
    return [Clip(f"{s:g}s", f"synthetic speech, seed {100 + i}", synthetic_speech(s, 100 + i))
            for i, s in enumerate(ENCODER_SECONDS)]  # fmt: skip


def _repeat(samples: np.ndarray, length: int) -> np.ndarray:
    return np.resize(samples, length).astype(np.float32)  # np.resize repeats the array cyclically


def synthetic_speech(seconds: float, seed: int) -> np.ndarray:
    """Speech-like audio: voiced syllables (a gliding pitch, harmonics shaped by random formants, a
    syllable envelope), noise bursts for fricatives, short pauses. Deterministic per seed; not silence,
    so the servers' audio checks accept it, and with a mel spectrum that moves like speech."""
    rng = np.random.default_rng(seed)
    total = round(seconds * SAMPLE_RATE)
    out = np.zeros(total, np.float64)
    position = 0
    while position < total:
        length = int(rng.uniform(0.12, 0.32) * SAMPLE_RATE)
        segment = _fricative(rng, length) if rng.random() < 0.2 else _vowel(rng, length)
        end = min(position + length, total)
        out[position:end] += segment[: end - position]
        position = end + int(rng.uniform(0.0, 0.12) * SAMPLE_RATE)  # a pause between syllables
    out += 1e-3 * rng.standard_normal(total)  # room noise: no exact zeros anywhere
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def _vowel(rng: np.random.Generator, length: int) -> np.ndarray:
    t = np.arange(length) / SAMPLE_RATE
    f0 = rng.uniform(90, 220) * (1 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-9))  # a pitch glide
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    formants = rng.uniform((300, 900, 2200), (900, 2200, 3200))
    wave = np.zeros(length)
    for k in range(1, int(4000 / f0.max()) + 1):
        gain = sum(np.exp(-(((k * f0.mean()) - f) / 150.0) ** 2) for f in formants) + 0.02
        wave += gain / k * np.sin(k * phase)
    return wave * np.hanning(length)


def _fricative(rng: np.random.Generator, length: int) -> np.ndarray:
    noise = rng.standard_normal(length)
    noise = np.diff(noise, prepend=0.0)  # tilted towards high frequencies, as /s/ and /f/ are
    return 0.3 * noise * np.hanning(length)
