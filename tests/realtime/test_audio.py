"""PCM helpers: plain calls, no loop, plus the microphone path as it is on this machine."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from realtime.audio import (
    FRAME_BYTES,
    SILENCE_DBFS,
    AudioDeviceError,
    Framer,
    Resampler,
    downmix,
    float32_to_int16,
    int16_to_float32,
    mulaw_to_int16,
    open_microphone,
    read_wav,
    resample,
    rms,
    rms_dbfs,
)


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def test_int16_float_round_trip_is_exact() -> None:
    x = np.array([-32768, -1, 0, 1, 12345, 32767], dtype=np.int16)
    f = int16_to_float32(x.tobytes())
    assert f.dtype == np.float32 and f.min() == -1.0 and f.max() < 1.0
    assert np.array_equal(float32_to_int16(f), x)


def test_float_to_int16_clips() -> None:
    assert float32_to_int16(np.array([2.0, -2.0, 0.5])).tolist() == [32767, -32768, 16384]


def test_downmix_interleaved() -> None:
    stereo = np.array([100, 300, -50, 50, 7, 8], dtype=np.int16)
    assert downmix(stereo, 2).tolist() == [200, 0, 8]  # 7.5 rounds to even
    three = np.array([3.0, 6.0, 9.0, 1.0], dtype=np.float32)  # trailing partial frame dropped
    assert downmix(three, 3).tolist() == [6.0]
    assert downmix(stereo, 1) is not None and len(downmix(stereo, 1)) == 6


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 8000])
def test_resampling_keeps_frequency_and_length_ratio(rate: int) -> None:
    x = sine(1000.0, rate, 1.0)
    y = resample(x, rate, 16000)
    assert len(y) == -(-len(x) * 16000 // rate)
    assert abs(peak_hz(y, 16000) - 1000.0) <= 16000 / len(y)
    # amplitude kept in the passband (edges excluded)
    assert abs(np.sqrt(np.mean(y[200:-200] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_resampling_removes_content_above_the_new_nyquist() -> None:
    y = resample(sine(12000.0, 48000, 0.5), 48000, 16000)  # 12 kHz cannot exist at 16 kHz
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 0.01


@pytest.mark.parametrize("rate", [48000, 44100])
def test_chunked_resampling_equals_one_shot(rate: int) -> None:
    x = float32_to_int16(sine(440.0, rate, 0.7))
    whole = resample(x, rate)
    r = Resampler(rate)
    rng = np.random.default_rng(7)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 2000))
        parts.append(r.process(x[i : i + n].tobytes()))
        i += n
    parts.append(r.flush())
    chunked = np.concatenate(parts)
    assert chunked.dtype == np.int16 and len(chunked) == len(whole)
    assert np.max(np.abs(chunked.astype(int) - whole.astype(int))) <= 1


def test_same_rate_is_pass_through() -> None:
    x = float32_to_int16(sine(440.0, 16000, 0.1))
    assert np.array_equal(resample(x, 16000), x)


def test_framer_cuts_exact_frames() -> None:
    f = Framer()
    assert FRAME_BYTES == 1600
    assert f.push(b"\x01" * 1000) == []
    frames = f.push(b"\x02" * 2500)
    assert [len(x) for x in frames] == [1600, 1600] and f.pending == 300
    assert frames[0] == b"\x01" * 1000 + b"\x02" * 600
    tail = f.flush()
    assert tail == b"\x02" * 300 + bytes(1300)
    assert f.flush() is None
    f.push(b"\x03" * 10)
    assert f.flush(pad=False) == b"\x03" * 10


def test_rms_of_known_signals() -> None:
    full_square = np.array([32767, -32768] * 400, dtype=np.int16)
    assert rms(full_square) == pytest.approx(1.0, abs=1e-4)
    assert rms_dbfs(full_square) == pytest.approx(0.0, abs=0.01)
    s = float32_to_int16(sine(1000.0, 16000, 0.05, amp=0.5))
    assert rms(s.tobytes()) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    assert rms_dbfs(s) == pytest.approx(-9.03, abs=0.05)
    assert rms_dbfs(np.zeros(800, dtype=np.int16)) == SILENCE_DBFS
    assert rms(b"") == 0.0


def test_mulaw_decoding() -> None:
    assert mulaw_to_int16(bytes([0x00, 0x80, 0xFF, 0x7F])).tolist() == [-32124, 32124, 0, 0]


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int, width: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 2:
            w.writeframes(float32_to_int16(samples).astype("<i2").tobytes())
        else:  # 24-bit
            v = np.rint(samples * (2**23 - 1)).astype(np.int32)
            b = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=1)
            w.writeframes(b.astype(np.uint8).tobytes())


@pytest.mark.parametrize("width", [2, 3])
def test_read_wav_stereo_48k_to_mono_16k(tmp_path: Path, width: int) -> None:
    left = sine(500.0, 48000, 0.5)
    stereo = np.stack([left, left], axis=1).reshape(-1)
    path = tmp_path / "x.wav"
    write_wav(path, stereo, 48000, 2, width)
    pcm = read_wav(path)
    assert pcm.dtype == np.int16 and len(pcm) == 8000
    assert abs(peak_hz(pcm.astype(np.float64), 16000) - 500.0) <= 2.0
    assert rms(pcm[100:-100]) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def _have_input_device() -> bool:
    try:
        import sounddevice as sd

        sd.query_devices(None, "input")
    except Exception:
        return False
    return True


@pytest.mark.skipif(_have_input_device(), reason="this machine has a working audio input")
async def test_microphone_missing_gives_a_clear_error() -> None:
    # Here PortAudio is not installed (sounddevice's import raises OSError) or there is no
    # input device: the error must say what to do instead of leaking the OSError.
    with pytest.raises(AudioDeviceError) as info:
        async for _ in open_microphone():
            break
    message = str(info.value)
    assert message.startswith("no audio input device: ")
    assert "apt-get install libportaudio2" in message and "--wav FILE" in message
