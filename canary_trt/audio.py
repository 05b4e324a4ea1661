"""Audio in: any file soundfile reads (wav/flac/ogg/...), bytes or arrays -> 16 kHz mono float32.

Torch-free on purpose: the gRPC client imports this too.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .contract import SAMPLE_RATE
from .errors import InvalidInput, MissingFile


class AudioError(InvalidInput):
    """Audio that cannot be used, with the reason and the source named."""


def load_audio(source: str | os.PathLike | bytes | np.ndarray, sample_rate: int | None = None) -> np.ndarray:
    """Decode `source` and return float32 mono samples at 16 kHz.

    A path or encoded bytes are decoded with soundfile (its rate is read from the file); an array must
    come with its `sample_rate` and is shaped [samples] or [samples, channels]. Channels are averaged;
    other rates are converted with soxr's very-high-quality resampler.
    """
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise AudioError("an audio array needs its sample_rate")
        samples, rate, name = source, sample_rate, "audio array"
        if np.issubdtype(samples.dtype, np.signedinteger):  # PCM integers -> [-1, 1), as soundfile reads them
            samples = samples / np.float64(2 ** (8 * samples.itemsize - 1))
    else:
        samples, rate, name = _decode(source)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    elif samples.ndim != 1:
        raise AudioError(f"{name}: expected [samples] or [samples, channels], got shape {samples.shape}")
    if rate != SAMPLE_RATE and samples.size:
        import soxr

        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="VHQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode(source) -> tuple[np.ndarray, int, str]:
    import soundfile as sf

    if isinstance(source, (bytes, bytearray)):
        name, handle = "audio bytes", io.BytesIO(source)
    else:
        name = handle = str(Path(source).expanduser())
        if not Path(name).is_file():
            raise MissingFile(f"audio file not found: {name}")
    try:
        samples, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        # libsndfile's own reason ("Format not recognised."), not its message naming a Python object
        raise AudioError(f"{name}: cannot decode audio ({getattr(e, 'error_string', None) or e})") from None
    return samples, rate, name


def duration(samples: np.ndarray) -> float:
    return len(samples) / SAMPLE_RATE
