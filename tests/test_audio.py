"""canary_trt.audio.load_audio: files (wav/flac/ogg), bytes and arrays -> 16 kHz mono float32."""

import numpy as np
import pytest
import soundfile as sf

from canary_trt.audio import SAMPLE_RATE, AudioError, duration, load_audio
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
