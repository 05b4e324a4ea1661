"""The long-form segmenter on real speech: Debian's pocketsphinx-testdata recordings joined with pauses of known
positions over a -60 dBFS noise floor, minutes long; and a stretch joined with no pause, longer than a chunk.

Ground truth is the clips' own signal (loud_span_ms): a clip's speech spans its loud stretches; a pause is what
lies between two such spans. No VAD takes part in the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from canary_trt.audio import load_audio
from canary_trt.contract import LIBRIVOX_DIR, MAX_AUDIO_SECONDS
from canary_trt.errors import InvalidInput
from canary_trt.longform import FRAME_MS, Segmenter, SegmenterOptions, SileroVad, segment, segment_frames
from canary_trt.longform.segmenter import StreamingSegmenter, _Regions
from canary_trt.longform.vad import frame_energy_db, model_path, padded_frames, speech_probabilities

DATA = LIBRIVOX_DIR.parent
OTHER_WAVS = [f"cards/00{i}.wav" for i in range(1, 6)]
RAW_16K = ["goforward.raw", "numbers.raw", "something.raw", "tidigits/dhd.2934z.raw"]  # 16 kHz s16le mono
OPTIONS = SegmenterOptions()
MS = 16  # samples per millisecond


def load_clip(path: Path) -> np.ndarray:
    if path.suffix == ".raw":
        return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768
    return load_audio(path)


def loud_span_ms(clip: np.ndarray) -> tuple[int, int]:
    """A clip's speech, in ms from its start: from the first to the last run of >= 30 ms within 20 dB of its
    loudest 10-ms window (the clips' own background is only 30-40 dB down; single loud windows are clicks)."""
    windows = clip[: clip.size // 160 * 160].reshape(-1, 160).astype(np.float64)
    db = 10 * np.log10(np.mean(windows**2, axis=1) + 1e-12)
    loud = db > db.max() - 20
    sustained = np.flatnonzero(loud[:-2] & loud[1:-1] & loud[2:])
    return int(sustained[0]) * 10, (int(sustained[-1]) + 3) * 10


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    paths = sorted(LIBRIVOX_DIR.glob("*.wav")) + [DATA / p for p in OTHER_WAVS + RAW_16K]
    missing = [str(p) for p in paths if not p.is_file()]
    if len(paths) < 14 or missing:
        pytest.fail(f"pocketsphinx-testdata recordings missing ({missing or LIBRIVOX_DIR}): install the Debian package")
    return [load_clip(p) for p in paths]


@dataclass
class Recording:
    audio: np.ndarray
    speech: list[tuple[int, int]]  # ms: each placed clip's speech span
    pauses: list[tuple[int, int, bool | None]]  # ms, between speech spans or the edges; long, mergeable, or unsure


def join(clips, gaps_ms, seed: int, trim: bool = False) -> Recording:
    """Clips placed after the given gaps (ms, whole), on seeded -60 dBFS white noise; `trim` keeps only speech."""
    parts, speech, at = [], [], 0
    for clip, gap in zip(clips, gaps_ms, strict=True):
        lo, hi = loud_span_ms(clip)
        if trim:
            clip, lo, hi = clip[lo * MS : hi * MS], 0, hi - lo
        clip = np.pad(clip, (0, -clip.size % MS))  # whole ms, so positions stay exact
        at += gap
        parts += [np.zeros(gap * MS, np.float32), clip]
        speech.append((at + lo, at + hi))
        at += clip.size // MS
    tail = 1500
    audio = np.concatenate(parts + [np.zeros(tail * MS, np.float32)])
    audio += np.random.default_rng(seed).standard_normal(audio.size).astype(np.float32) * np.float32(10 ** (-60 / 20))
    edges = [0] + [x for span in speech for x in span] + [audio.size // MS]
    pauses = []
    for i, gap in enumerate([*gaps_ms, tail]):
        lo, hi = edges[2 * i], edges[2 * i + 1]
        # long: skipped whatever the clips' edges and the VAD's hangover; mergeable: clearly under the limit
        pauses.append((lo, hi, True if gap > OPTIONS.max_merge_pause_ms + 400 else
                       False if hi - lo < OPTIONS.max_merge_pause_ms - 300 else None))  # fmt: skip
    return Recording(audio, speech, pauses)


@pytest.fixture(scope="module")
def paused(clips) -> Recording:
    """~3 minutes: the 14 clips three times, in shuffled order, after pauses of 0.45-1.2 s (merged while the
    chunk has room) and 2.5-4 s (always skipped)."""
    rng = np.random.default_rng(7)
    order = [i for _ in range(3) for i in rng.permutation(len(clips))]
    gaps = [1000] + [int(rng.choice([450, 600, 800, 1200, 2500, 4000], p=[0.25, 0.25, 0.2, 0.1, 0.1, 0.1]))
                     for _ in order[1:]]  # fmt: skip
    return join([clips[i] for i in order], gaps, seed=1)


@pytest.fixture(scope="module")
def paused_frames(paused):
    """The recording's VAD probabilities and frame energies, computed once."""
    frames = padded_frames(paused.audio)
    energies = [frame_energy_db(f) for f in frames]
    energies[-1] = frame_energy_db(paused.audio[(len(frames) - 1) * 512 :])
    return speech_probabilities(paused.audio), np.array(energies)


@pytest.fixture(scope="module")
def paused_chunks(paused):
    return segment(paused.audio)


def in_pause(ms: int, rec: Recording) -> bool:
    return any(lo <= ms <= hi for lo, hi, _ in rec.pauses)


def check_chunks(chunks, rec: Recording, options: SegmenterOptions = OPTIONS):
    """What every segmentation must give: whole ms, ordered, disjoint, within the model's limit, all speech covered."""
    audio_ms = rec.audio.size // MS
    for c in chunks:
        assert all(type(v) is int for v in (c.start_ms, c.end_ms, c.max_new_tokens)), c
        assert 0 <= c.start_ms < c.end_ms <= audio_ms
        assert c.end_ms - c.start_ms <= options.max_chunk_ms <= MAX_AUDIO_SECONDS * 1000
        assert (c.start_sample, c.end_sample) == (c.start_ms * 16, c.end_ms * 16)
        assert c.max_new_tokens == options.token_budget(c.end_ms - c.start_ms)
    for a, b in zip(chunks, chunks[1:]):
        assert a.end_ms <= b.start_ms and a.forced_end == b.forced_start
        assert b.start_ms == a.end_ms or not a.forced_end  # a forced cut leaves nothing out
    for lo, hi in rec.speech:  # no speech dropped: each speech millisecond lies in some chunk
        covered = np.zeros(hi - lo, bool)
        for c in chunks:
            covered[max(c.start_ms, lo) - lo : max(min(c.end_ms, hi) - lo, 0)] = True
        assert covered.all(), f"speech {lo}-{hi} ms not covered: {np.flatnonzero(~covered)[[0, -1]] + lo}"


@pytest.mark.slow  # imports torch for silero-vad's own wrapper
def test_vad_matches_silero_onnx_wrapper(paused):
    """Our numpy/ONNX Runtime framing gives silero-vad's own OnnxWrapper's probabilities (it needs torch)."""
    torch = pytest.importorskip("torch")
    from silero_vad.utils_vad import OnnxWrapper

    audio = paused.audio[: 40 * 16000 + 300]  # speech, pauses and a partial last frame
    ours = speech_probabilities(audio)
    theirs = OnnxWrapper(str(model_path()), force_onnx_cpu=True).audio_forward(torch.from_numpy(audio), 16000)
    theirs = theirs.numpy().reshape(-1)
    assert ours.shape == theirs.shape == (math.ceil(audio.size / 512),)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert ours.max() > 0.9 and ours.min() < 0.1  # both speech and pauses were in it

    vad = SileroVad()  # streaming from a fresh state, frame by frame, is the same as the array function
    assert [vad.process(f) for f in padded_frames(audio[:16000])] == speech_probabilities(audio[:16000]).tolist()


@pytest.mark.slow  # imports torch for silero-vad's own wrapper
def test_regions_are_silero_hysteresis(paused_frames):
    """Speech regions (pad 0) are get_speech_timestamps_from_probs' on the same probabilities: silero counts a
    pause from the frame after it began, so its min_silence is one frame more than ours for the same cut."""
    pytest.importorskip("torch")
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    probs = paused_frames[0]
    out = []
    regions = _Regions(OPTIONS, out)
    for t, p in enumerate(probs):
        regions.push(t, float(p))
    regions.finish(len(probs))
    theirs = get_speech_timestamps_from_probs(probs.tolist(), threshold=OPTIONS.threshold, speech_pad_ms=0,
                                              min_speech_duration_ms=OPTIONS.min_speech_ms,
                                              min_silence_duration_ms=OPTIONS.min_silence_ms - FRAME_MS,
                                              audio_length_samples=len(probs) * 512)  # fmt: skip
    assert [(r.on * 512, r.off * 512) for r in out] == [(s["start"], s["end"]) for s in theirs]
    assert len(out) > 30


def test_paused_recording(paused, paused_chunks):
    """Every cut in a pause, every long pause skipped, every cut needed, all speech covered."""
    chunks = paused_chunks
    assert paused.audio.size / 16000 > 150 and len(chunks) >= 5
    check_chunks(chunks, paused)
    assert not any(c.forced_end or c.forced_start for c in chunks)  # a pause is always within reach here
    for c in chunks:  # both edges of every chunk lie in a pause (the recording's edges count as pauses)
        assert in_pause(c.start_ms, paused) and in_pause(c.end_ms, paused), c
    for lo, hi, long in paused.pauses:  # a long pause is never inside a chunk: its noise is not sent
        if long:
            assert not any(c.start_ms < lo and hi < c.end_ms for c in chunks), (lo, hi)
    # A cut in a short pause is needed: the next clip's speech (+ pad, + VAD hangover) would not fit in the chunk.
    starts = [lo for lo, _ in paused.speech]
    merged = 0
    for a, b in zip(chunks, chunks[1:]):
        nxt = next(i for i, s in enumerate(starts) if s >= a.end_ms)
        gap_lo, gap_hi, long = paused.pauses[nxt]
        assert gap_lo <= a.end_ms <= gap_hi
        if long is False:
            assert paused.speech[nxt][1] + OPTIONS.speech_pad_ms + 400 > a.start_ms + OPTIONS.max_chunk_ms, (a, b)
    for c in chunks:
        merged += sum(1 for lo, hi, _ in paused.pauses if c.start_ms < lo and hi < c.end_ms)
    assert merged > 10  # chunks really span several clips
    kinds = [long for _, _, long in paused.pauses]
    assert kinds.count(False) > 20 and kinds.count(True) > 4  # both kinds of pause were tested
    assert max(c.duration_s for c in chunks) > 25


def test_streaming_feeds_give_the_same_chunks(paused, paused_chunks, paused_frames):
    """20-ms packets, 2-s packets and the whole recording: identical chunks; the frame-level rule too."""
    for piece_ms in (20, 2000):
        stream, got = StreamingSegmenter(), []
        for at in range(0, paused.audio.size, piece_ms * MS):
            got += stream.feed(paused.audio[at : at + piece_ms * MS])
        assert got + stream.finish() == paused_chunks, piece_ms
    probs, energies = paused_frames
    assert segment_frames(probs, energies, paused.audio.size) == paused_chunks


def test_shorter_chunks_and_lookahead(paused, paused_frames):
    """Other options, the same guarantees: 12-s chunks decided within 6 s still cut only in pauses."""
    options = SegmenterOptions(max_chunk_s=12, max_lookahead_ms=6000)
    chunks = segment_frames(*paused_frames, paused.audio.size, options=options)
    check_chunks(chunks, paused, options)
    assert not any(c.forced_end for c in chunks) and len(chunks) > 15
    assert all(in_pause(c.start_ms, paused) and in_pause(c.end_ms, paused) for c in chunks)


def test_decisions_need_bounded_lookahead(paused, paused_chunks, paused_frames):
    """A live stream gets each chunk by max_lookahead_ms after its end, and what it has so far never changes."""
    probs, energies = paused_frames
    seg, emitted_at = Segmenter(), []
    for t, (p, e) in enumerate(zip(probs, energies)):
        emitted_at += [((t + 1) * FRAME_MS, c) for c in seg.push(p, e)]
    assert [c for _, c in emitted_at] == paused_chunks[: len(emitted_at)]
    assert len(emitted_at) >= len(paused_chunks) - 1
    for known_ms, c in emitted_at:
        assert known_ms - c.end_ms <= OPTIONS.max_lookahead_ms, (known_ms, c)


def test_speech_without_a_pause_is_cut_at_its_quietest_frame(clips):
    """Clips trimmed to their speech and joined with no gap (> 40 s): a forced cut, inside speech, at the
    lowest-energy frame among the last max_lookahead_ms before the chunk could grow no longer."""
    order = list(range(5)) * 2 + list(range(5, 10))
    gaps = [1000] + [0] * (len(order) - 1)
    rec = join([clips[i] for i in order], gaps, seed=2, trim=True)
    stretch_lo, stretch_hi = rec.speech[0][0], rec.speech[-1][1]
    assert stretch_hi - stretch_lo > 40_000
    rec.pauses = [(0, stretch_lo, False), (stretch_hi, rec.audio.size // MS, False)]  # no pause in between
    probs = speech_probabilities(rec.audio)
    chunks = segment(rec.audio)
    check_chunks(chunks, rec)
    forced = [c for c in chunks if c.forced_end]
    assert forced and all(stretch_lo < c.end_ms < stretch_hi for c in forced)
    first = chunks[0]
    assert first.forced_end and chunks[1].forced_start and chunks[1].start_ms == first.end_ms
    # the rule, restated: force at the first frame t with (t + 1) * 32 + pad > start + max; quietest centre in
    # frames t - L/32 + 1 .. t (centres <= start + max)
    o, deadline = OPTIONS, first.start_ms + OPTIONS.max_chunk_ms
    t = (deadline - o.speech_pad_ms) // FRAME_MS
    window = [f for f in range(t - o.max_lookahead_ms // FRAME_MS + 1, t + 1) if f * FRAME_MS + 16 <= deadline]
    energy = {f: frame_energy_db(rec.audio[f * 512 : (f + 1) * 512]) for f in window}
    assert first.end_ms == min(window, key=lambda f: (energy[f], f)) * FRAME_MS + 16
    assert first.end_ms > deadline - o.max_lookahead_ms
    # ... and the cut is in a real dip: quieter than most of the speech around it
    cut_frame = (first.end_ms - 16) // FRAME_MS
    assert energy[cut_frame] < np.percentile(list(energy.values()), 5)
    regions = []  # the premise: the VAD finds one speech region over the whole stretch, no pause
    tracker = _Regions(OPTIONS, regions)
    for t_, p in enumerate(probs):
        tracker.push(t_, float(p))
    tracker.finish(len(probs))
    assert [r for r in regions if r.off * FRAME_MS > stretch_lo and r.on * FRAME_MS < stretch_hi] == regions[:1]
    assert regions[0].on * FRAME_MS < stretch_lo + 100 and regions[0].off * FRAME_MS > stretch_hi - 100


def test_recording_cut_off_in_speech(paused, paused_chunks):
    """A recording that stops mid-word, not on a whole millisecond: the last chunk ends at its last whole ms,
    the ones before it are unchanged."""
    lo, hi = paused.speech[3]
    audio = paused.audio[: (lo + hi) // 2 * MS + 7]
    end_ms = audio.size // MS
    chunks = segment(audio)
    assert chunks[-1].end_ms == end_ms and chunks[:-1] == paused_chunks[: len(chunks) - 1]
    assert chunks[-1].start_ms == paused_chunks[len(chunks) - 1].start_ms
    check_chunks(chunks, Recording(audio, paused.speech[:3] + [(lo, end_ms)], paused.pauses))


def test_token_budget_and_options():
    o = SegmenterOptions()
    assert (o.token_budget(30_000), o.token_budget(40_000), o.token_budget(1000)) == (256, 336, 24)
    assert SegmenterOptions(max_new_tokens=128).token_budget(30_000) == 128
    with pytest.raises(InvalidInput, match="max_chunk_s"):
        SegmenterOptions(max_chunk_s=41)
    with pytest.raises(InvalidInput, match="max_lookahead_ms"):
        SegmenterOptions(max_lookahead_ms=1000)
    with pytest.raises(InvalidInput, match="neg_threshold"):
        SegmenterOptions(threshold=0.4, neg_threshold=0.5)
    assert SegmenterOptions(max_chunk_s=40).max_chunk_ms == 40_000
