"""Audio in: any file soundfile reads (wav/flac/ogg/opus/mp3...), bytes or arrays -> 16 kHz mono float32.

Torch-free on purpose: the gRPC client imports this too.

Bounded memory for any input. A file's length is read from its header (`audio_info`) and checked against
`max_seconds` before a sample is decoded: a 25 MiB FLAC or Opus upload can hold hours. The audio is then
decoded, downmixed and resampled BLOCK_FRAMES frames at a time into one output buffer, so the working memory
is the 16 kHz output plus one block, never the whole file at its own rate. soxr's streaming resampler gives
the same samples, bit for bit, as its one-shot `soxr.resample` (tests/test_audio.py checks), so every size
takes this one path. libsndfile stops at a header's declared length, so one that understates it is cut
there; where a header does not declare the length (libsndfile reports SF_COUNT_MAX: a FLAC written to a
pipe), a running count of decoded frames stops decoding with an AudioError as soon as it passes `max_seconds`.
Otherwise libsndfile 1.2 knows the length of WAV, FLAC, Ogg Vorbis/Opus and MP3 before decoding (tested).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import SAMPLE_RATE
from .errors import InvalidInput, MissingFile

BLOCK_FRAMES = 1 << 16  # frames decoded at a time: 0.5 MiB of float32 stereo
_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's SF_COUNT_MAX: the header does not say how long the audio is
# The output buffer is allocated once for what the header declares, up to this much; past it (or with no
# declared length) it grows while decoding, so a header claiming days costs nothing until they decode.
_PREALLOCATE_SECONDS = 3600.0
_UNKNOWN_START_SECONDS = 60.0


class AudioError(InvalidInput):
    """Audio that cannot be used, with the reason and the source named."""


class AudioTooLong(AudioError):
    """Audio over the caller's max_seconds, found from its header or while decoding (never after)."""


@dataclass(frozen=True)
class AudioInfo:
    """What a source declares before anything is decoded; `frames` is None when its header does not say."""

    name: str
    sample_rate: int
    channels: int
    frames: int | None

    @property
    def seconds(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate


def audio_info(source: str | os.PathLike | bytes | np.ndarray, sample_rate: int | None = None) -> AudioInfo:
    """The rate, channels and length of `source` from its header (an array: from its shape), decoding nothing."""
    if isinstance(source, np.ndarray):
        return _array_info(source, sample_rate)
    file, info = _open(source)
    file.close()
    return info


def load_audio(source: str | os.PathLike | bytes | np.ndarray, sample_rate: int | None = None, *,
               max_seconds: float | None = None) -> np.ndarray:
    """Decode `source` and return float32 mono samples at 16 kHz.

    A path or encoded bytes are decoded with soundfile (its rate is read from the file); an array must
    come with its `sample_rate` and is shaped [samples] or [samples, channels]. Channels are averaged;
    other rates are converted with soxr's very-high-quality resampler.
    `max_seconds`: longer audio raises AudioError, from the header's length before decoding, or, where the
    header does not declare it, as soon as decoding passes the limit. Exactly `max_seconds` is accepted.
    """
    if max_seconds is not None and not max_seconds > 0:
        raise AudioError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
    if isinstance(source, np.ndarray):
        info = _array_info(source, sample_rate)
        _check_declared(info, max_seconds)
        return _convert(info, _array_blocks(source), max_seconds)
    file, info = _open(source)
    with file:
        _check_declared(info, max_seconds)
        return _convert(info, _file_blocks(file, info.name), max_seconds)


def duration(samples: np.ndarray) -> float:
    return len(samples) / SAMPLE_RATE


# --- sources ------------------------------------------------------------------------------------------


def _array_info(samples: np.ndarray, sample_rate: int | None) -> AudioInfo:
    name = "audio array"
    if sample_rate is None:
        raise AudioError("an audio array needs its sample_rate")
    if not sample_rate > 0:
        raise AudioError(f"{name}: sample_rate must be positive, got {sample_rate}")
    if samples.ndim not in (1, 2) or samples.ndim == 2 and samples.shape[1] == 0:
        raise AudioError(f"{name}: expected [samples] or [samples, channels], got shape {samples.shape}")
    return AudioInfo(name, sample_rate, 1 if samples.ndim == 1 else samples.shape[1], len(samples))


def _array_blocks(samples: np.ndarray):
    """[frames, channels] float32 blocks of an array; PCM integers scaled to [-1, 1) as soundfile reads them."""
    if samples.ndim == 1:
        samples = samples[:, None]
    scale = np.float64(2 ** (8 * samples.itemsize - 1)) if np.issubdtype(samples.dtype, np.signedinteger) else None
    for start in range(0, len(samples), BLOCK_FRAMES):
        block = samples[start:start + BLOCK_FRAMES]
        yield np.asarray(block if scale is None else block / scale, dtype=np.float32)


def _open(source):
    """(open SoundFile, AudioInfo): only the header has been read."""
    import soundfile as sf

    if isinstance(source, (bytes, bytearray)):
        name, handle = "audio bytes", io.BytesIO(source)
    else:
        name = handle = str(Path(source).expanduser())
        if not Path(name).is_file():
            raise MissingFile(f"audio file not found: {name}")
    try:
        file = sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        # libsndfile's own reason ("Format not recognised."), not its message naming a Python object
        raise AudioError(f"{name}: cannot decode audio ({getattr(e, 'error_string', None) or e})") from None
    frames = None if file.frames >= _UNKNOWN_FRAMES else file.frames
    return file, AudioInfo(name, file.samplerate, file.channels, frames)


def _file_blocks(file, name: str):
    """[frames, channels] float32 blocks, each valid until the next is read (one buffer is reused)."""
    import soundfile as sf

    buffer = np.empty((BLOCK_FRAMES, file.channels), np.float32)
    pointer = sf._ffi.cast("float *", buffer.ctypes.data)
    while True:
        # libsndfile's own read, not SoundFile.read: that seeks to "position + frames" after every read, and
        # the seek fails at the end of a FLAC whose header omits or overstates its length. (soundfile is
        # pinned, so its private handles are stable.) libsndfile stops at the declared length by itself.
        got = sf._snd.sf_readf_float(file._file, pointer, BLOCK_FRAMES)
        if got <= 0:
            if code := sf._snd.sf_error(file._file):
                raise AudioError(f"{name}: cannot decode audio ({sf.LibsndfileError(code).error_string})")
            return
        yield buffer[:got]


# --- limits and conversion ----------------------------------------------------------------------------


def _check_declared(info: AudioInfo, max_seconds: float | None) -> None:
    if max_seconds is not None and info.frames is not None and info.frames > max_seconds * info.sample_rate:
        raise AudioTooLong(f"{info.name}: {clock(info.seconds)} of audio ({info.seconds:.1f} s, from its header) is "
                         f"over the {max_seconds:g} s limit; refused before decoding")


def _convert(info: AudioInfo, blocks, max_seconds: float | None) -> np.ndarray:
    """Downmix and resample block by block; a running count of decoded frames enforces `max_seconds`."""
    import soxr

    rate = info.sample_rate
    resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32",
                                                                     quality="VHQ")
    limit = math.inf if max_seconds is None else max_seconds * rate
    expected = info.frames / rate if info.frames is not None else _UNKNOWN_START_SECONDS
    out = _Output(math.ceil(min(expected, _PREALLOCATE_SECONDS) * SAMPLE_RATE) + 16)
    decoded = 0
    for block in blocks:
        decoded += len(block)
        if decoded > limit:  # a declared length was checked already: this catches undeclared ones
            declared = "does not declare its length" if info.seconds is None else f"declares {info.seconds:.1f} s"
            raise AudioTooLong(f"{info.name}: decodes to more than the {max_seconds:g} s limit (its header "
                             f"{declared}); stopped decoding there")
        mono = _downmix(block)
        out.append(mono if resampler is None else resampler.resample_chunk(mono))
    if resampler is not None:
        out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))  # the filter's tail
    return out.take()


def _downmix(block: np.ndarray) -> np.ndarray:
    """The channels' mean, summed column by column: block.mean(axis=1) is ~25x slower over such short rows.
    Row by row either way, so blocks give the samples the whole file would; equal to numpy's mean bit for bit
    up to 7 channels (numpy sums 8 or more pairwise: 1 ulp apart)."""
    mono = block[:, 0].copy()  # a copy: a file's block is a reused buffer
    for channel in range(1, block.shape[1]):
        mono += block[:, channel]
    if block.shape[1] > 1:
        mono /= np.float32(block.shape[1])
    return mono


class _Output:
    """A float32 array filled in order. It grows with ndarray.resize (realloc, which remaps large blocks
    rather than copying them), so the old and the new array are never both alive."""

    def __init__(self, capacity: int):
        self.data, self.size = np.empty(capacity, np.float32), 0

    def append(self, chunk: np.ndarray) -> None:
        end = self.size + len(chunk)
        if end > len(self.data):
            self.data.resize(max(end, len(self.data) * 3 // 2), refcheck=False)  # no views of it exist
        self.data[self.size:end] = chunk
        self.size = end

    def take(self) -> np.ndarray:
        self.data.resize(self.size, refcheck=False)
        return self.data


def clock(seconds: float) -> str:
    """A duration as H:MM:SS, for messages."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02}:{secs:02}"
