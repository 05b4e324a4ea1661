"""canary_trt.audio.load_audio: files (wav/flac/ogg/opus/mp3), bytes and arrays -> 16 kHz mono float32, in
bounded memory: lengths checked from the header before decoding, decoded and resampled in blocks."""

import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr

from canary_trt import audio
from canary_trt.audio import SAMPLE_RATE, AudioError, audio_info, duration, load_audio
from canary_trt.contract import LIBRIVOX_DIR


def sine(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def spectrum(samples: np.ndarray, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, amplitudes) of a Hann-windowed FFT; a sine of amplitude A peaks near A/2."""
    window = np.hanning(len(samples))
    amplitudes = np.abs(np.fft.rfft(samples * window)) / window.sum() * 2
    return np.fft.rfftfreq(len(samples), 1 / rate), amplitudes


def amplitude_at(samples: np.ndarray, freq: float) -> float:
    freqs, amps = spectrum(samples)
    near = np.abs(freqs - freq) <= 3
    return float(amps[near].max())


def peak_frequency(samples: np.ndarray) -> float:
    freqs, amps = spectrum(samples)
    return float(freqs[np.argmax(amps)])


def test_sample_rate_and_error_type():
    assert SAMPLE_RATE == 16000
    # The CLI and the server report ValueErrors as clear user errors.
    assert issubclass(AudioError, ValueError)


# --- resampling and downmix -------------------------------------------------------------------------


def test_stereo_44k_file_becomes_mono_16k(tmp_path):
    rate = 44100
    left, right = sine(440, rate, amplitude=0.6), sine(1000, rate, amplitude=0.3)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")

    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    assert abs(len(out) - SAMPLE_RATE) <= 2  # 1 s
    # Both tones survive the resampler, each at half its channel's amplitude (mean of the channels).
    assert amplitude_at(out, 440) == pytest.approx(0.3, abs=0.01)
    assert amplitude_at(out, 1000) == pytest.approx(0.15, abs=0.01)
    assert peak_frequency(out) == pytest.approx(440, abs=2)
    # Nothing else: the resampler adds no audible images or aliases.
    freqs, amps = spectrum(out)
    far = (np.abs(freqs - 440) > 20) & (np.abs(freqs - 1000) > 20)
    assert amps[far].max() < 1e-3

    # Downmix is the mean of the channels: resampling is linear, so it equals the mean of each channel alone.
    sf.write(tmp_path / "left.wav", left, rate, subtype="FLOAT")
    sf.write(tmp_path / "right.wav", right, rate, subtype="FLOAT")
    mean = (load_audio(tmp_path / "left.wav") + load_audio(tmp_path / "right.wav")) / 2
    np.testing.assert_allclose(out, mean, atol=1e-5)


def test_identical_channels_downmix_to_the_channel(tmp_path):
    tone = sine(440, 44100)
    sf.write(tmp_path / "mono.wav", tone, 44100, subtype="FLOAT")
    sf.write(tmp_path / "dual.wav", np.stack([tone, tone], axis=1), 44100, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "dual.wav"), load_audio(tmp_path / "mono.wav"), atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 32000, 48000, 96000])
def test_other_rates_are_resampled_to_16k(tmp_path, rate):
    seconds = 1.5
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, sine(440, rate, seconds), rate, subtype="FLOAT")
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - seconds * SAMPLE_RATE) <= 2
    assert duration(out) == pytest.approx(seconds, abs=2 / SAMPLE_RATE)
    assert peak_frequency(out) == pytest.approx(440, abs=2)
    assert amplitude_at(out, 440) == pytest.approx(0.5, abs=0.01)


# --- formats ------------------------------------------------------------------------------------------


def test_16k_float_wav_is_returned_bit_for_bit(tmp_path):
    samples = np.random.default_rng(0).uniform(-1, 1, 12345).astype(np.float32)
    path = tmp_path / "float.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    out = load_audio(path)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, samples)


def test_int16_wav_is_scaled_to_unit_range(tmp_path):
    pcm = np.array([0, 1, -1, 16384, -16384, 32767, -32768] * 100, dtype=np.int16)
    path = tmp_path / "pcm16.wav"
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    out = load_audio(path)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, pcm.astype(np.float32) / 32768)
    assert out.min() == -1.0 and out.max() < 1.0


@pytest.mark.parametrize(
    "suffix, fmt, subtype, lossless",
    [
        (".wav", "WAV", "PCM_16", True),
        (".wav", "WAV", "PCM_24", True),
        (".wav", "WAV", "FLOAT", True),
        (".flac", "FLAC", "PCM_16", True),
        (".ogg", "OGG", "VORBIS", False),
    ],
)
def test_formats_decode(tmp_path, suffix, fmt, subtype, lossless):
    tone = sine(440, SAMPLE_RATE, seconds=2.0)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, tone, SAMPLE_RATE, format=fmt, subtype=subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == len(tone)
    assert peak_frequency(out) == pytest.approx(440, abs=2)
    if lossless:
        np.testing.assert_allclose(out, tone, atol=1 / 32768)
    else:
        assert np.corrcoef(out, tone)[0, 1] > 0.99
    # Encoded bytes decode exactly like the file.
    np.testing.assert_array_equal(load_audio(path.read_bytes()), out)


def test_44k_stereo_flac_and_ogg(tmp_path):
    rate = 44100
    stereo = np.stack([sine(440, rate), sine(440, rate)], axis=1)
    for name, subtype in (("s.flac", "PCM_24"), ("s.ogg", "VORBIS")):
        sf.write(tmp_path / name, stereo, rate, subtype=subtype)
        out = load_audio(tmp_path / name)
        assert abs(len(out) - SAMPLE_RATE) <= 2, name
        assert peak_frequency(out) == pytest.approx(440, abs=2), name


def test_empty_file_gives_empty_array(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2), np.float32), 44100, subtype="FLOAT")
    out = load_audio(path)
    assert out.dtype == np.float32 and out.shape == (0,)


# --- sources: path, str, bytes, arrays ---------------------------------------------------------------


def test_bytes_str_and_path_inputs_agree(tmp_path):
    rate = 22050
    stereo = np.stack([sine(300, rate), sine(700, rate)], axis=1)
    path = tmp_path / "in.wav"
    sf.write(path, stereo, rate, subtype="PCM_16")
    from_path = load_audio(path)
    np.testing.assert_array_equal(load_audio(str(path)), from_path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), from_path)
    np.testing.assert_array_equal(load_audio(bytearray(path.read_bytes())), from_path)


def test_array_needs_sample_rate():
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(np.zeros(1600, np.float32))


def test_array_at_16k_is_kept():
    samples = np.random.default_rng(1).uniform(-1, 1, 4000).astype(np.float32)
    out = load_audio(samples, sample_rate=SAMPLE_RATE)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, samples)
    # float64 in, float32 out
    out64 = load_audio(samples.astype(np.float64), sample_rate=SAMPLE_RATE)
    assert out64.dtype == np.float32
    np.testing.assert_array_equal(out64, samples)


def test_array_samples_by_channels_is_downmixed():
    left, right = sine(440, SAMPLE_RATE), sine(880, SAMPLE_RATE, amplitude=0.25)
    out = load_audio(np.stack([left, right], axis=1), sample_rate=SAMPLE_RATE)
    assert out.shape == (SAMPLE_RATE,)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-7)


def test_array_and_file_agree(tmp_path):
    rate = 48000
    stereo = np.stack([sine(440, rate), sine(1200, rate)], axis=1)
    sf.write(tmp_path / "a.wav", stereo, rate, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(stereo, sample_rate=rate), load_audio(tmp_path / "a.wav"), atol=1e-7)


@pytest.mark.parametrize("dtype, subtype", [(np.int16, "PCM_16"), (np.int32, "PCM_32")])
def test_integer_array_is_scaled_like_an_integer_file(tmp_path, dtype, subtype):
    full_scale = np.iinfo(dtype).max
    pcm = np.round(sine(440, SAMPLE_RATE, amplitude=1.0).astype(np.float64) * full_scale).astype(dtype)
    sf.write(tmp_path / "pcm.wav", pcm, SAMPLE_RATE, subtype=subtype)
    out = load_audio(pcm, sample_rate=SAMPLE_RATE)
    assert out.dtype == np.float32 and np.abs(out).max() <= 1.0
    np.testing.assert_array_equal(out, load_audio(tmp_path / "pcm.wav"))
    # and a [samples, channels] int16 array like a stereo int16 file
    stereo = np.stack([pcm, pcm // 2], axis=1)
    sf.write(tmp_path / "pcm2.wav", stereo, SAMPLE_RATE, subtype=subtype)
    np.testing.assert_allclose(load_audio(stereo, sample_rate=SAMPLE_RATE), load_audio(tmp_path / "pcm2.wav"), atol=1e-7)


def test_3d_array_is_rejected_with_its_shape():
    with pytest.raises(AudioError, match=r"\(2, 3, 4\)"):
        load_audio(np.zeros((2, 3, 4), np.float32), sample_rate=SAMPLE_RATE)


# --- errors -------------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "missing.wav"
    with pytest.raises(FileNotFoundError, match="missing.wav") as info:
        load_audio(missing)
    assert str(missing) in str(info.value)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_audio(tmp_path)


def test_text_file_with_wav_suffix_names_the_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert "decode" in str(info.value)


def test_corrupt_bytes_raise_audio_error():
    garbage = np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(AudioError, match="audio bytes"):
        load_audio(garbage)
    with pytest.raises(AudioError, match="audio bytes"):
        load_audio(b"")


def test_truncated_header_raises_audio_error(tmp_path):
    path = tmp_path / "good.wav"
    sf.write(path, sine(440, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(path.read_bytes()[:20])
    with pytest.raises(AudioError, match="cut.wav"):
        load_audio(cut)


# --- real speech --------------------------------------------------------------------------------------


def test_librivox_clips_load():
    paths = sorted(LIBRIVOX_DIR.glob("*.wav"))
    assert len(paths) == 5, f"install Debian's pocketsphinx-testdata ({LIBRIVOX_DIR})"
    total = 0.0
    for path in paths:
        assert sf.info(path).samplerate == SAMPLE_RATE
        samples = load_audio(path)
        assert samples.dtype == np.float32 and samples.ndim == 1, path
        assert 0.01 < np.abs(samples).max() <= 1.0, path  # speech, scaled to [-1, 1]
        assert np.isfinite(samples).all()
        total += duration(samples)
    assert total == pytest.approx(24.73, abs=0.01)


# --- bounded memory: header checks, block-wise decode ---------------------------------------------------


@pytest.fixture(scope="module")
def speech_44k_stereo() -> np.ndarray:
    """The five LibriVox clips (24.7 s) at 44.1 kHz as int16 stereo: left the speech, right it reversed at 0.7."""
    speech = np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(LIBRIVOX_DIR.glob("*.wav"))])
    left = soxr.resample(speech, SAMPLE_RATE, 44100, quality="VHQ")
    stereo = np.stack([left, 0.7 * left[::-1]], axis=1)
    return np.round(np.clip(stereo, -1, 1) * 32767).astype(np.int16)


def write_repeated(path, stereo: np.ndarray, seconds: float, rate: int = 44100, subtype="PCM_16", **options):
    """`seconds` of `stereo` repeated, written block by block (never the whole file in memory)."""
    total = round(seconds * rate)
    with sf.SoundFile(path, "w", rate, stereo.shape[1], subtype, **options) as f:
        written = 0
        while written < total:
            block = stereo[:total - written]
            f.write(block)
            written += len(block)


def flac_declaring(data: bytes, frames: int) -> bytes:
    """The FLAC `data` with STREAMINFO's 36-bit total-samples field set to `frames` (0: unknown)."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO is the first metadata block
    at = 8 + 13  # its bytes 13..17 end with the field
    field = int.from_bytes(data[at:at + 5], "big") & ~((1 << 36) - 1) | frames
    return data[:at] + field.to_bytes(5, "big") + data[at + 5:]


def one_shot(path) -> np.ndarray:
    """What the loader did before it decoded in blocks: the whole file, downmixed, one soxr call."""
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    return mono if rate == SAMPLE_RATE else soxr.resample(mono, rate, SAMPLE_RATE, quality="VHQ")


def forbid_decoding(monkeypatch):
    """Any attempt to decode (or resample) samples fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("decoded audio although the header alone should have refused it")

    for owner, attribute in ((sf, "read"), (sf, "blocks"), (sf.SoundFile, "read"), (sf.SoundFile, "blocks"),
                             (audio, "_file_blocks"), (soxr, "ResampleStream"), (soxr, "resample")):
        monkeypatch.setattr(owner, attribute, refuse)


@pytest.fixture
def no_decoding(monkeypatch):
    forbid_decoding(monkeypatch)


def test_streaming_resampler_is_bit_identical_to_one_shot():
    # The reason there is one code path for every size: soxr's ResampleStream fed in blocks gives exactly
    # soxr.resample's samples (max abs difference 0.0) for every rate, length and block size tried.
    rng = np.random.default_rng(3)
    for rate in (8000, 22050, 44100, 48000, 96000):
        for frames in (1, 999, 65537, rate * 3 + 7):
            x = rng.uniform(-1, 1, frames).astype(np.float32)
            whole = soxr.resample(x, rate, SAMPLE_RATE, quality="VHQ")
            for block in (1000, 65536):
                stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="VHQ")
                parts = [stream.resample_chunk(x[i:i + block]) for i in range(0, frames, block)]
                parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
                np.testing.assert_array_equal(np.concatenate(parts), whole, err_msg=f"{rate} Hz, {frames}, {block}")


@pytest.mark.parametrize("block_frames", [4099, audio.BLOCK_FRAMES])
@pytest.mark.parametrize("name, subtype", [("s.flac", "PCM_16"), ("s.ogg", "VORBIS"), ("s.wav", "PCM_16"),
                                           ("f.wav", "FLOAT")])
def test_blockwise_decode_equals_one_shot_decode(tmp_path, monkeypatch, speech_44k_stereo, name, subtype,
                                                 block_frames):
    path = tmp_path / name
    sf.write(path, speech_44k_stereo, 44100, subtype=subtype)
    monkeypatch.setattr(audio, "BLOCK_FRAMES", block_frames)  # 4099: ~270 blocks, boundaries anywhere
    out = load_audio(path)
    np.testing.assert_array_equal(out, one_shot(path))  # max abs difference 0.0
    assert len(out) == pytest.approx(24.73 * SAMPLE_RATE, abs=200)


def test_downmix_matches_numpys_mean_for_up_to_7_channels():
    block = np.random.default_rng(4).uniform(-1, 1, (5000, 7)).astype(np.float32)
    for channels in range(1, 8):
        np.testing.assert_array_equal(audio._downmix(block[:, :channels]), block[:, :channels].mean(axis=1))
    np.testing.assert_allclose(audio._downmix(np.tile(block, 2)), np.tile(block, 2).mean(axis=1), atol=2e-7)


@pytest.fixture(scope="module")
def three_hour_flac(tmp_path_factory):
    """A real 3-hour FLAC (8 kHz digital silence: ~0.3 MB, written in about a second)."""
    path = tmp_path_factory.mktemp("long") / "three_hours.flac"
    write_repeated(path, np.zeros((8000 * 600, 1), np.int16), 3 * 3600, rate=8000)
    return path


def test_hours_long_flac_is_refused_by_its_header(three_hour_flac, no_decoding):
    info = audio_info(three_hour_flac)
    assert (info.sample_rate, info.channels, info.frames, info.seconds) == (8000, 1, 3 * 3600 * 8000, 10800.0)
    for source, name in ((three_hour_flac, str(three_hour_flac)), (three_hour_flac.read_bytes(), "audio bytes")):
        start = time.perf_counter()
        with pytest.raises(AudioError) as error:
            load_audio(source, max_seconds=3600)
        assert time.perf_counter() - start < 0.5  # decoding it would take seconds and 0.7 GB
        assert str(error.value) == (f"{name}: 3:00:00 of audio (10800.0 s, from its header) is over the 3600 s "
                                    "limit; refused before decoding")


@pytest.mark.parametrize("fmt, subtype, rate", [("WAV", "PCM_16", 44100), ("FLAC", "PCM_16", 44100),
                                                ("OGG", "VORBIS", 44100), ("OGG", "OPUS", 48000),
                                                ("MP3", "MPEG_LAYER_III", 44100)])
def test_each_format_is_checked_by_its_header(tmp_path, monkeypatch, speech_44k_stereo, fmt, subtype, rate):
    path = tmp_path / f"clip.{fmt.lower()}"
    write_repeated(path, speech_44k_stereo, 10.0, rate=rate, format=fmt, subtype=subtype)
    seconds = audio_info(path).seconds
    assert seconds == pytest.approx(10.0, abs=0.05)  # libsndfile knows every one of these lengths up front
    out = load_audio(path, max_seconds=seconds)  # exactly at the limit: accepted
    assert abs(len(out) - seconds * SAMPLE_RATE) <= 2
    forbid_decoding(monkeypatch)
    with pytest.raises(AudioError, match=r"0:00:10 of audio \(10\.0 s, from its header\) is over the 9\.9 s limit"):
        load_audio(path, max_seconds=9.9)


def test_a_file_at_the_limit_passes_and_one_frame_more_does_not(tmp_path, speech_44k_stereo):
    path = tmp_path / "ten.flac"
    write_repeated(path, speech_44k_stereo, 10.0)
    assert len(load_audio(path, max_seconds=10)) == 10 * SAMPLE_RATE
    write_repeated(path, speech_44k_stereo, 10.0 + 1 / 44100)
    with pytest.raises(AudioError, match=r"0:00:10 of audio \(10\.0 s, from its header\) is over the 10 s limit"):
        load_audio(path, max_seconds=10)
    with pytest.raises(AudioError, match="max_seconds must be a positive"):
        load_audio(path, max_seconds=0)


def test_arrays_are_checked_by_their_length(no_decoding):
    with pytest.raises(AudioError, match=r"audio array: 1:00:00 of audio .* over the 60 s limit"):
        load_audio(np.zeros((3600 * 8000, 2), np.int16), sample_rate=8000, max_seconds=60)
    with pytest.raises(AudioError, match="sample_rate must be positive"):
        load_audio(np.zeros(100, np.float32), sample_rate=0)


def test_flac_without_a_declared_length_is_capped_while_decoding(tmp_path, monkeypatch, speech_44k_stereo):
    path = tmp_path / "s.flac"
    sf.write(path, speech_44k_stereo, 44100, subtype="PCM_16")
    unknown = flac_declaring(path.read_bytes(), 0)  # as a FLAC encoder writing to a pipe leaves it
    info = audio_info(unknown)
    assert info.frames is None and info.seconds is None
    np.testing.assert_array_equal(load_audio(unknown), load_audio(path))  # decodes fully without a limit

    decoded = []
    blocks = audio._file_blocks

    def counting(file, name):
        for block in blocks(file, name):
            decoded.append(len(block))
            yield block

    monkeypatch.setattr(audio, "_file_blocks", counting)
    with pytest.raises(AudioError, match=r"audio bytes: decodes to more than the 5 s limit \(its header does not "
                                         r"declare its length\); stopped decoding there"):
        load_audio(unknown, max_seconds=5)
    # stopped at the first block past 5 s, not at the end of the 24.7 s
    assert sum(decoded) - audio.BLOCK_FRAMES <= 5 * 44100 < sum(decoded)


def test_flac_whose_header_overstates_its_length(tmp_path, speech_44k_stereo, no_decoding):
    # A truncated or lying header: 3 hours declared, 24.7 s there. Refused by the header with a limit...
    path = tmp_path / "s.flac"
    sf.write(path, speech_44k_stereo, 44100, subtype="PCM_16")
    overstated = flac_declaring(path.read_bytes(), 3 * 3600 * 44100)
    with pytest.raises(AudioError, match=r"3:00:00 of audio"):
        load_audio(overstated, max_seconds=3600)


def test_flac_whose_header_overstates_its_length_decodes_what_is_there(tmp_path, speech_44k_stereo):
    # ... and without one it decodes what is there (soundfile's own read would fail seeking past the end).
    path = tmp_path / "s.flac"
    sf.write(path, speech_44k_stereo, 44100, subtype="PCM_16")
    overstated = flac_declaring(path.read_bytes(), 3 * 3600 * 44100)
    np.testing.assert_array_equal(load_audio(overstated), load_audio(path))


@pytest.fixture(scope="module")
def twenty_minute_flac(tmp_path_factory, speech_44k_stereo):
    path = tmp_path_factory.mktemp("long") / "twenty_minutes.flac"
    write_repeated(path, speech_44k_stereo, 20 * 60, compression_level=0)  # fastest to write: ~50 MB
    return path


@pytest.mark.parametrize("header", ["declares its length", "does not declare its length"])
def test_peak_memory_is_the_output_plus_a_block(tmp_path, twenty_minute_flac, header):
    path = twenty_minute_flac
    if header == "does not declare its length":  # the output buffer grows while decoding instead
        path = tmp_path / "unknown.flac"
        path.write_bytes(flac_declaring(twenty_minute_flac.read_bytes(), 0))
    tracemalloc.start()
    try:
        out = load_audio(path, max_seconds=20 * 60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) == 20 * 60 * SAMPLE_RATE
    native = 20 * 60 * 44100 * 2 * 4  # 423 MB: the file decoded whole as float32 stereo at 44.1 kHz
    # Measured: 1.01x the 76.8 MB output with a declared length, 1.30x without one (growth by 1.5x).
    assert peak <= 1.5 * out.nbytes, f"peak {peak / 1e6:.1f} MB for a {out.nbytes / 1e6:.1f} MB output"
    assert peak < native / 4
