"""Long recordings -> chunks the model can take: speech found by the VAD, merged up to `max_chunk_s`, cut in pauses.

One streaming rule serves both uses. `Segmenter` is fed one (speech probability, energy) pair per 32-ms VAD
frame and emits a chunk as soon as its end is decided; every decision reads the audio up to the chunk's end
plus at most `max_lookahead_ms`, so a live stream fed the same audio emits exactly the chunks the batch
function `segment` gives (which is the same code fed the whole recording at once).

The rule, in VAD frames (all edges are whole milliseconds, so `ms * 16` is an exact sample offset):
- Speech regions: hysteresis as in silero-vad's get_speech_timestamps (6.2.3, utils_vad.py): a region starts
  at a frame with p >= threshold and ends where p first fell below neg_threshold, once no frame has reached
  threshold for min_silence_ms (a *pause*). Regions shorter than min_speech_ms are dropped (clicks, breaths).
- A chunk starts speech_pad_ms before its first region and takes in the next region across a pause only if
  that region begins within max_merge_pause_ms (longer silences are skipped, never sent), ends in a pause of
  its own within max_lookahead_ms of the first pause's start (so the pause being passed over is never needed
  for a cut that could not be seen in time), and fits, padded, in max_chunk_s. Otherwise the chunk ends in the
  pause: speech_pad_ms after the speech, or in the middle when the pause is shorter than two pads.
- Only speech with no pause for the whole chunk is cut inside speech: at the centre of the quietest frame
  (lowest energy, not lowest VAD probability: inside running speech the probabilities all sit near 1 and their
  minimum says little, while the energy dip is the gap between words) among the last max_lookahead_ms of
  audio when the chunk can grow no longer.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..contract import MAX_AUDIO_SECONDS, MIN_AUDIO_SECONDS, SAMPLE_RATE
from ..errors import InvalidInput
from .vad import FRAME_MS, FRAME_SAMPLES, SileroVad, frame_energy_db

SAMPLES_PER_MS = SAMPLE_RATE // 1000


@dataclass(frozen=True)
class SegmenterOptions:
    """How recordings are cut. Defaults are for batch and live use alike (both must use the same)."""

    threshold: float = 0.5  # silero-vad 6.2.3 get_speech_timestamps' default
    neg_threshold: float | None = None  # None: max(threshold - 0.15, 0.01), silero-vad 6.2.3's default
    min_speech_ms: int = 250  # silero's default: shorter blips are not speech worth a request
    min_silence_ms: int = 300  # a pause a cut may use: phrase and sentence gaps, not the dips between words
    speech_pad_ms: int = 200  # VAD edges are 32-ms frames and soft onsets/fricative tails score low: keep them
    max_merge_pause_ms: int = 2000  # a longer silence always ends a chunk: its noise is skipped, not decoded
    max_chunk_s: float = 30.0  # the model takes 40 s; 30 s keeps room and most of its training lengths
    max_lookahead_ms: int = 10000  # decision latency: read speech rarely runs 10 s without a 300-ms pause
    # New-token budget: fast English is ~4-5 words/s and the Qwen BPE gives ~1.25 tokens/word on cased,
    # punctuated prose (up to ~1.8 with digits and acronyms), i.e. ~6.5 tokens/s at the fast end; 8/s leaves
    # headroom, the margin covers short chunks and the end token. 30 s -> 256, 40 s -> 336.
    tokens_per_second: float = 8.0
    token_margin: int = 16
    max_new_tokens: int = 336  # the cap: the budget of a 40-s chunk

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise InvalidInput(f"SegmenterOptions: {what}")

        need(0.0 < self.threshold < 1.0, f"threshold must be in (0, 1), got {self.threshold}")
        need(0.0 < self.negative_threshold <= self.threshold,
             f"neg_threshold must be in (0, threshold], got {self.negative_threshold}")  # fmt: skip
        for name in ("min_speech_ms", "min_silence_ms", "speech_pad_ms", "max_merge_pause_ms", "max_lookahead_ms",
                     "token_margin", "max_new_tokens"):  # fmt: skip
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 0, f"{name} must be a whole number >= 0, got {value!r}")
        need(MIN_AUDIO_SECONDS < self.max_chunk_s <= MAX_AUDIO_SECONDS,
             f"max_chunk_s must be in ({MIN_AUDIO_SECONDS}, {MAX_AUDIO_SECONDS}] (the model's limit), "
             f"got {self.max_chunk_s}")  # fmt: skip
        need(self.min_silence_ms >= FRAME_MS, f"min_silence_ms must be >= {FRAME_MS} (one VAD frame)")
        need(self.max_merge_pause_ms >= max(self.min_silence_ms, 2 * self.speech_pad_ms),
             "max_merge_pause_ms must be >= min_silence_ms and >= 2 * speech_pad_ms")  # fmt: skip
        # A merge is decided by the time a region starting within max_merge_pause_ms is known to be speech
        # (min_speech_ms) or a dropped blip (then min_silence_ms more, plus two frames of rounding).
        settle_ms = self.max_merge_pause_ms + self.min_speech_ms + self.min_silence_ms + 2 * FRAME_MS
        need(self.max_lookahead_ms >= settle_ms,
             "max_lookahead_ms must be >= max_merge_pause_ms + min_speech_ms + min_silence_ms + 64")  # fmt: skip
        need(self.max_lookahead_ms <= self.max_chunk_ms // 2, "max_lookahead_ms must be <= max_chunk_s / 2")
        need(self.tokens_per_second > 0 and self.max_new_tokens >= 1,
             "tokens_per_second and max_new_tokens must be > 0")  # fmt: skip

    @property
    def negative_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01) if self.neg_threshold is None else self.neg_threshold

    @property
    def max_chunk_ms(self) -> int:
        return int(round(self.max_chunk_s * 1000))

    def token_budget(self, duration_ms: int) -> int:
        """New tokens allowed for a chunk of `duration_ms`: grows with its length, capped."""
        return min(math.ceil(duration_ms * self.tokens_per_second / 1000) + self.token_margin, self.max_new_tokens)


@dataclass(frozen=True)
class Chunk:
    """One request's audio: samples [start_ms * 16, end_ms * 16) of the recording."""

    start_ms: int
    end_ms: int
    max_new_tokens: int
    forced_start: bool = False  # begins where the previous chunk was cut inside speech
    forced_end: bool = False  # cut inside speech (no pause within max_chunk_s), at the quietest frame

    @property
    def start_sample(self) -> int:
        return self.start_ms * SAMPLES_PER_MS

    @property
    def end_sample(self) -> int:
        return self.end_ms * SAMPLES_PER_MS

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000

    def slice(self, audio: np.ndarray) -> np.ndarray:
        return audio[self.start_sample : self.end_sample]


@dataclass(frozen=True)
class _Region:
    on: int  # first speech frame
    off: int  # first frame of the pause after it
    closed_at: int  # the frame whose arrival confirmed the pause


class _Regions:
    """Speech regions by hysteresis, frame by frame; closed regions (>= min_speech) are appended to `out`."""

    def __init__(self, options: SegmenterOptions, out: deque):
        self.threshold, self.negative = options.threshold, options.negative_threshold
        self.silence_frames = -(-options.min_silence_ms // FRAME_MS)
        self.speech_frames = -(-options.min_speech_ms // FRAME_MS)
        self.out = out
        self.on: int | None = None  # the open region's first frame
        self.temp_end: int | None = None  # where its tentative pause began

    def push(self, t: int, p: float) -> None:
        if self.on is None:
            if p >= self.threshold:
                self.on = t
            return
        if p >= self.threshold:
            self.temp_end = None
        elif p < self.negative and self.temp_end is None:
            self.temp_end = t
        if self.temp_end is not None and t + 1 - self.temp_end >= self.silence_frames:
            self._close(self.temp_end, t)

    def finish(self, frames: int) -> None:
        if self.on is not None:
            self._close(self.temp_end if self.temp_end is not None else frames, frames - 1)

    def open_speech(self, t: int) -> int:
        """Speech frames of the open region so far (its tentative pause excluded); never decreases."""
        return (self.temp_end if self.temp_end is not None else t + 1) - self.on

    def _close(self, off: int, t: int) -> None:
        if off - self.on >= self.speech_frames:
            self.out.append(_Region(self.on, off, t))
        self.on = self.temp_end = None


@dataclass
class _Open:
    start_ms: int
    forced_start: bool
    last_off: int | None = None  # the last taken region's off: the pause the chunk may end in


class Segmenter:
    """The streaming rule on VAD frames: `push(p, energy_db)` per frame, `finish()` at the end; each returns the
    chunks decided by then, in order."""

    def __init__(self, options: SegmenterOptions = SegmenterOptions()):
        self.o = options
        self._upcoming: deque[_Region] = deque()  # closed regions not yet taken into a chunk
        self._regions = _Regions(options, self._upcoming)
        self._energy: deque[tuple[int, float]] = deque(maxlen=options.max_lookahead_ms // FRAME_MS)
        self._t = -1  # the last frame pushed
        self._prev_end = 0  # where the last emitted chunk ended: the next starts no earlier
        self._chunk: _Open | None = None
        self._audio_ms: int | None = None  # known at finish: the last chunk ends no later

    def push(self, probability: float, energy_db: float) -> list[Chunk]:
        self._t += 1
        self._regions.push(self._t, float(probability))
        self._energy.append((self._t, float(energy_db)))
        return self._advance(final=False)

    def finish(self, total_samples: int | None = None) -> list[Chunk]:
        frames = self._t + 1
        self._audio_ms = frames * FRAME_MS if total_samples is None else total_samples // SAMPLES_PER_MS
        self._regions.finish(frames)
        return self._advance(final=True)

    def open_start_ms(self) -> int | None:
        """Where the undecided utterance starts (the chunk being built; its final chunk starts there too),
        or None while no speech is pending. A live caller re-decodes from here for interim results."""
        return None if self._chunk is None else self._chunk.start_ms

    def undecided_from_ms(self) -> int:
        """Every chunk still to come starts at or after this: a live caller may drop the audio before it."""
        if self._chunk is not None:
            return self._chunk.start_ms
        # no chunk open, so no closed region is waiting (_advance opens one at once): the next chunk starts at
        # the region now forming, or at one starting after the last frame read, less the pad
        onset = self._regions.on if self._regions.on is not None else self._t + 1
        return max(self._prev_end, onset * FRAME_MS - self.o.speech_pad_ms)

    # -- the rule ---------------------------------------------------------------------------------------------

    def _advance(self, final: bool) -> list[Chunk]:
        o, out = self.o, []
        known_ms = (self._t + 1) * FRAME_MS  # audio read so far
        while True:
            chunk = self._chunk
            if chunk is None:  # open the next chunk at the next speech region, once it is known to be one
                if self._upcoming:
                    on = self._upcoming[0].on
                elif self._regions.on is not None and self._real_open():
                    on = self._regions.on
                else:
                    return out
                self._chunk = _Open(max(self._prev_end, on * FRAME_MS - o.speech_pad_ms), forced_start=False)
                continue
            deadline_ms = chunk.start_ms + o.max_chunk_ms
            if chunk.last_off is None:  # its first region (or the rest of one after a forced cut) is still open
                if self._upcoming:
                    chunk.last_off = self._upcoming.popleft().off
                    continue
                if not final and self._regions.temp_end is None and known_ms + o.speech_pad_ms > deadline_ms:
                    out.append(self._forced_cut(chunk, deadline_ms))
                    continue
                return out
            pause_ms = chunk.last_off * FRAME_MS
            next_on = self._next_onset()
            if next_on is not None and next_on * FRAME_MS - pause_ms <= o.max_merge_pause_ms:
                nxt = self._upcoming[0] if self._upcoming else None
                if (nxt is not None and (nxt.closed_at + 1) * FRAME_MS <= pause_ms + o.max_lookahead_ms
                        and nxt.off * FRAME_MS + o.speech_pad_ms <= deadline_ms):  # fmt: skip
                    chunk.last_off = self._upcoming.popleft().off  # merged across the pause
                    continue
                grown_out = self._regions.temp_end is None and known_ms + o.speech_pad_ms > deadline_ms
                if nxt is None and not final and known_ms < pause_ms + o.max_lookahead_ms and not grown_out:
                    return out  # the next region may still end in a pause, in time and within the chunk
            elif next_on is None and not final:
                started = self._regions.on  # a region not yet known to be speech or a blip
                unsure = started is not None and started * FRAME_MS - pause_ms <= o.max_merge_pause_ms
                if unsure or known_ms - pause_ms <= o.max_merge_pause_ms:  # the next frame may start one
                    return out  # speech may still resume within max_merge_pause_ms
            out.append(self._end_in_pause(chunk, pause_ms, next_on))

    def _real_open(self) -> bool:
        return self._regions.open_speech(self._t) * FRAME_MS >= self.o.min_speech_ms

    def _next_onset(self) -> int | None:
        """The first frame of the next region known to be speech (not a blip still to be dropped)."""
        if self._upcoming:
            return self._upcoming[0].on
        return self._regions.on if self._regions.on is not None and self._real_open() else None

    def _end_in_pause(self, chunk: _Open, pause_ms: int, next_on: int | None) -> Chunk:
        end = pause_ms + self.o.speech_pad_ms
        if next_on is not None and next_on * FRAME_MS - pause_ms < 2 * self.o.speech_pad_ms:
            end = pause_ms + (next_on * FRAME_MS - pause_ms) // 2  # 16-ms multiples: still whole ms
        if self._audio_ms is not None:
            end = min(end, self._audio_ms)
        return self._emit(chunk, end, forced_end=False)

    def _forced_cut(self, chunk: _Open, deadline_ms: int) -> Chunk:
        """No pause within max_chunk_s: cut at the centre of the quietest recent frame; the region goes on."""
        centre = FRAME_MS // 2
        frames = [(e, t) for t, e in self._energy if chunk.start_ms < t * FRAME_MS + centre <= deadline_ms]
        quietest = min(frames)[1]  # lowest energy; the earliest frame on a tie
        made = self._emit(chunk, quietest * FRAME_MS + centre, forced_end=True)
        self._chunk = _Open(made.end_ms, forced_start=True)
        return made

    def _emit(self, chunk: _Open, end_ms: int, forced_end: bool) -> Chunk:
        self._chunk, self._prev_end = None, end_ms
        return Chunk(chunk.start_ms, end_ms, self.o.token_budget(end_ms - chunk.start_ms),
                     forced_start=chunk.forced_start, forced_end=forced_end)  # fmt: skip


class StreamingSegmenter:
    """Audio in, any piece size (a live stream's packets or a whole file): VAD frames -> `Segmenter`."""

    def __init__(self, options: SegmenterOptions = SegmenterOptions(), vad: SileroVad | None = None):
        self.vad = vad or SileroVad()
        self.vad.reset()
        self.segmenter = Segmenter(options)
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a whole frame
        self._samples = 0

    def feed(self, samples: np.ndarray) -> list[Chunk]:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._samples += samples.size
        buffered = np.concatenate([self._pending, samples])
        whole = buffered.size - buffered.size % FRAME_SAMPLES
        out = []
        for frame in buffered[:whole].reshape(-1, FRAME_SAMPLES):
            out += self.segmenter.push(self.vad.process(frame), frame_energy_db(frame))
        self._pending = buffered[whole:]
        return out

    def finish(self) -> list[Chunk]:
        """The last partial frame is zero-padded for the VAD (as silero's get_speech_timestamps pads it) and its
        energy taken over its real samples; the last chunk ends at the last whole millisecond."""
        out = []
        if self._pending.size:
            frame = np.zeros(FRAME_SAMPLES, dtype=np.float32)
            frame[: self._pending.size] = self._pending
            out += self.segmenter.push(self.vad.process(frame), frame_energy_db(self._pending))
            self._pending = self._pending[:0]
        return out + self.segmenter.finish(self._samples)


def segment(audio: np.ndarray, options: SegmenterOptions = SegmenterOptions(),
            vad: SileroVad | None = None) -> list[Chunk]:  # fmt: skip
    """A whole recording (16 kHz mono float32) -> its chunks: the streaming code fed everything at once."""
    stream = StreamingSegmenter(options, vad)
    return stream.feed(audio) + stream.finish()


def segment_frames(probabilities, energies_db, total_samples: int | None = None,
                   options: SegmenterOptions = SegmenterOptions()) -> list[Chunk]:  # fmt: skip
    """Chunks from per-frame VAD probabilities and energies already computed (the same rule, no model)."""
    segmenter, out = Segmenter(options), []
    for p, e in zip(probabilities, energies_db, strict=True):
        out += segmenter.push(p, e)
    return out + segmenter.finish(total_samples)
