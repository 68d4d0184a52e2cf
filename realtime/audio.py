"""PCM helpers for the audio path: conversion, down-mixing, resampling, framing, levels, WAV, mic.

Everything upstream speech-to-text wants is 16 kHz mono signed 16-bit little-endian PCM sent in
50 ms frames (1600 bytes). The helpers here get arbitrary input into that shape. They are pure
numpy functions and small stateful classes without I/O, except `read_wav` (a file) and
`open_microphone` (a sound card, via the optional `sounddevice` package).

Resampling is a polyphase windowed-sinc filter (Kaiser window) over the rational ratio
out/in reduced by their gcd; `Resampler` keeps its filter history across chunks, so streaming a
signal chunk by chunk gives the same samples as resampling it in one go.
"""

from __future__ import annotations

import asyncio
import math
import wave
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

TARGET_RATE = 16000
FRAME_MS = 50
#: One 50 ms frame of 16 kHz s16le mono: 800 samples x 2 bytes.
FRAME_BYTES = TARGET_RATE * FRAME_MS // 1000 * 2
SILENCE_DBFS = -120.0

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]


class AudioDeviceError(RuntimeError):
    """No usable audio input: PortAudio or an input device is missing."""


# --- conversions ------------------------------------------------------------------------------


def as_int16(data: bytes | bytearray | memoryview | npt.NDArray[Any]) -> Int16Array:
    """View s16le bytes (or any array) as an int16 array; bytes are not copied."""
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
    return np.asarray(data, dtype=np.int16)


def int16_to_float32(samples: bytes | npt.NDArray[Any]) -> Float32Array:
    """int16 PCM to float32 in [-1, 1) (scale 1/32768, so the round trip is exact)."""
    return as_int16(samples).astype(np.float32) / np.float32(32768.0)


def float32_to_int16(samples: npt.NDArray[Any]) -> Int16Array:
    """float in [-1, 1] to int16, rounded and clipped (values beyond full scale saturate)."""
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def mulaw_to_int16(data: bytes) -> Int16Array:
    """Decode G.711 mu-law bytes to int16 PCM (the standard expansion table)."""
    u = ~np.frombuffer(data, dtype=np.uint8)
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    value = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return value.astype(np.int16)


def downmix(samples: npt.NDArray[Any], channels: int) -> npt.NDArray[Any]:
    """Average interleaved `channels`-channel samples into mono, keeping the dtype.

    A trailing partial frame (fewer values than `channels`) is dropped.
    """
    if channels < 1:
        raise ValueError("channels must be >= 1")
    arr = np.asarray(samples)
    if channels == 1:
        return arr
    usable = len(arr) - len(arr) % channels
    frames = arr[:usable].reshape(-1, channels).astype(np.float64).mean(axis=1)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        clipped: npt.NDArray[Any] = np.clip(np.rint(frames), info.min, info.max)
        return clipped.astype(arr.dtype)
    mono: npt.NDArray[Any] = frames.astype(arr.dtype)
    return mono


# --- resampling -------------------------------------------------------------------------------


def _design_filter(up: int, down: int, zero_crossings: int, rolloff: float) -> tuple[Any, int]:
    """Kaiser-windowed sinc low-pass at the upsampled rate, split into `up` phases.

    Returns (phases[up, taps], delay_out). The filter length is chosen so that its group delay
    is a whole number of output samples (`delay_out`), which the resampler then drops, so
    output sample n lines up with input time n * in_rate / out_rate.
    """
    span = max(up, down)
    half_up = zero_crossings * span / rolloff  # half-length at the upsampled rate
    delay_out = max(1, math.ceil(half_up / down))
    half = delay_out * down  # group delay in upsampled samples, a multiple of `down`
    length = 2 * half + 1
    taps = math.ceil(length / up)
    k = np.arange(taps * up, dtype=np.float64)
    cutoff = rolloff / (2.0 * span)  # cycles per upsampled sample
    h = 2.0 * cutoff * np.sinc(2.0 * cutoff * (k - half))
    window = np.kaiser(length, 8.6)
    h[:length] *= window
    h[length:] = 0.0
    h *= up / h[:length].sum()  # unity DC gain after zero-stuffing by `up`
    phases = np.stack([h[p::up] for p in range(up)])  # phases[p, t] = h[p + t * up]
    return phases, delay_out


class Resampler:
    """Streaming rational resampler (polyphase windowed sinc), exact across chunk boundaries.

    `process(chunk)` returns every output sample that the input so far determines; `flush()`
    returns the tail. Over a whole stream the output has ceil(n_in * out_rate / in_rate)
    samples. int16 in gives int16 out (rounded, clipped); float in gives float32 out.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int = TARGET_RATE,
        *,
        zero_crossings: int = 16,
        rolloff: float = 0.9,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        g = math.gcd(in_rate, out_rate)
        self.in_rate, self.out_rate = in_rate, out_rate
        self._up, self._down = out_rate // g, in_rate // g
        self._passthrough = self._up == self._down
        self._phases, self._delay = _design_filter(self._up, self._down, zero_crossings, rolloff)
        self._taps = self._phases.shape[1]
        # history holds the last taps-1 inputs before `_consumed`; zeros before the stream.
        self._history = np.zeros(self._taps - 1, dtype=np.float64)
        self._consumed = 0  # input samples received
        self._next_raw = 0  # next output index of the causal filter (before dropping delay)
        self._flushed = False

    def _run(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        buf = np.concatenate([self._history, x])
        base = self._consumed - (self._taps - 1)  # stream index of buf[0]
        self._consumed += len(x)
        last_in = self._consumed - 1
        # causal output n needs input index (n * down) // up <= last_in
        stop = ((last_in + 1) * self._up - 1) // self._down + 1 if last_in >= 0 else 0
        n = np.arange(self._next_raw, stop, dtype=np.int64)
        self._next_raw = max(self._next_raw, stop)
        self._history = buf[len(buf) - (self._taps - 1) :]
        if len(n) == 0:
            return np.zeros(0)
        j = n * self._down
        idx = j // self._up - base  # position of the newest input in buf
        phase = j % self._up
        out = np.empty(len(n))
        step = 4096  # bound the (outputs x taps) gather matrix
        t = np.arange(self._taps)
        for s in range(0, len(n), step):
            window = buf[idx[s : s + step, None] - t[None, :]]
            out[s : s + step] = np.einsum("ij,ij->i", window, self._phases[phase[s : s + step]])
        # drop the filter's group delay: raw output n is true output n - delay
        drop = max(0, self._delay - int(n[0]))
        return out[drop:]

    def _finish(self, y: npt.NDArray[np.float64], like: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if np.issubdtype(like.dtype, np.integer):
            return np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return y.astype(np.float32)

    def process(self, chunk: bytes | npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Feed input samples (mono); return the output samples now available."""
        if self._flushed:
            raise RuntimeError("Resampler already flushed")
        arr = as_int16(chunk) if isinstance(chunk, bytes | bytearray | memoryview) else chunk
        arr = np.asarray(arr)
        if self._passthrough:
            self._consumed += len(arr)
            return arr.copy()
        return self._finish(self._run(arr.astype(np.float64)), arr)

    def flush(self, dtype: Any = np.int16) -> npt.NDArray[Any]:
        """End of stream: return the remaining output samples (zeros are fed past the end)."""
        like = np.zeros(0, dtype=dtype)
        if self._flushed or self._passthrough:
            self._flushed = True
            return like
        self._flushed = True
        total = -(-self._consumed * self._up // self._down)  # ceil
        need_raw = total + self._delay  # raw outputs needed in all
        if need_raw <= self._next_raw:
            return like
        need_in = ((need_raw - 1) * self._down) // self._up + 1
        zeros = np.zeros(max(0, need_in - self._consumed))
        y = self._run(zeros)
        first_raw = self._next_raw - len(y)  # raw index of y[0]
        keep = max(0, min(len(y), need_raw - first_raw))
        return self._finish(y[:keep], like)


def resample(samples: npt.NDArray[Any], in_rate: int, out_rate: int = TARGET_RATE) -> Any:
    """One-shot resampling of a whole mono signal (same filter as `Resampler`)."""
    arr = np.asarray(samples)
    r = Resampler(in_rate, out_rate)
    head = r.process(arr)
    tail = r.flush(dtype=arr.dtype)
    return np.concatenate([head, tail.astype(head.dtype)])


# --- framing and levels -----------------------------------------------------------------------


class Framer:
    """Accumulates PCM bytes and cuts exact `frame_bytes` frames (default 50 ms at 16 kHz s16le).

    The carried remainder is always shorter than one frame, so memory is bounded.
    """

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        if frame_bytes <= 0:
            raise ValueError("frame_bytes must be positive")
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back waiting for a full frame."""
        return len(self._buf)

    def push(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add bytes; return the complete frames now available (possibly none)."""
        self._buf += data
        n = len(self._buf) // self.frame_bytes
        frames = [
            bytes(self._buf[i * self.frame_bytes : (i + 1) * self.frame_bytes]) for i in range(n)
        ]
        del self._buf[: n * self.frame_bytes]
        return frames

    def flush(self, *, pad: bool = True) -> bytes | None:
        """Return the remainder (zero-padded to a whole frame when `pad`), or None if empty."""
        if not self._buf:
            return None
        rest = bytes(self._buf)
        self._buf.clear()
        if pad:
            rest += bytes(self.frame_bytes - len(rest))
        return rest


def rms(frame: bytes | npt.NDArray[Any]) -> float:
    """Linear RMS of an int16 frame, relative to full scale (0.0 .. ~1.0)."""
    x = as_int16(frame).astype(np.float64)
    if len(x) == 0:
        return 0.0
    return float(np.sqrt(np.mean(x * x)) / 32768.0)


def rms_dbfs(frame: bytes | npt.NDArray[Any]) -> float:
    """RMS level in dBFS (20*log10 of `rms`; a full-scale sine is about -3 dBFS).

    Digital silence returns SILENCE_DBFS (-120) instead of -inf, so levels compare and print.
    """
    level = rms(frame)
    if level <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(level))


# --- files and devices ------------------------------------------------------------------------


def _wav_samples(raw: bytes, width: int) -> Float32Array:
    if width == 1:  # unsigned 8-bit
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return int16_to_float32(raw)
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return (v.astype(np.float32) / float(1 << 23)).astype(np.float32)
    if width == 4:
        return (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2**31).astype(np.float32)
    raise ValueError(f"unsupported WAV sample width: {width} bytes")


def read_wav(path: str | Path, out_rate: int = TARGET_RATE) -> Int16Array:
    """Read a PCM WAV file (8/16/24/32-bit, any rate, any channels) as mono int16 at `out_rate`."""
    with wave.open(str(path), "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(w.getnframes())
    mono = downmix(_wav_samples(raw, width), channels)
    out = resample(mono, rate, out_rate) if rate != out_rate else mono
    return float32_to_int16(out)


def _no_device(reason: str) -> AudioDeviceError:
    return AudioDeviceError(
        f"no audio input device: {reason}; install PortAudio (apt-get install libportaudio2) "
        "or use --wav FILE"
    )


async def open_microphone(
    *,
    sample_rate: int = TARGET_RATE,
    frame_ms: int = FRAME_MS,
    device: int | str | None = None,
    max_queued_frames: int = 100,
) -> AsyncIterator[bytes]:
    """Capture the microphone as mono s16le frames of `frame_ms` at `sample_rate`.

    The device is opened at its own default rate and resampled here. The audio callback runs on
    PortAudio's thread and hands blocks to the loop; if the consumer falls behind by more than
    `max_queued_frames` blocks the oldest are dropped (live audio: newest wins).

    Raises AudioDeviceError (on first iteration) when sounddevice, PortAudio or an input
    device is missing.
    """
    try:
        import sounddevice as sd  # optional dependency; PortAudio is loaded at import time
    except ImportError:
        raise _no_device("the sounddevice package is not installed") from None
    except OSError as exc:  # sounddevice raises OSError when libportaudio is absent
        raise _no_device(str(exc)) from None
    try:
        info = sd.query_devices(device, "input")
    except Exception as exc:  # PortAudioError / ValueError: no such device, no default input
        raise _no_device(str(exc) or type(exc).__name__) from None
    in_rate = int(info["default_samplerate"])
    loop = asyncio.get_running_loop()
    blocks: deque[bytes] = deque(maxlen=max_queued_frames)
    ready = asyncio.Event()

    def on_audio(indata: Any, frames: int, time_info: Any, status: Any) -> None:
        def push() -> None:
            blocks.append(bytes(indata))
            ready.set()

        loop.call_soon_threadsafe(push)

    resampler = Resampler(in_rate, sample_rate)
    framer = Framer(sample_rate * frame_ms // 1000 * 2)
    try:
        stream = sd.RawInputStream(
            samplerate=in_rate,
            channels=1,
            dtype="int16",
            device=device,
            blocksize=in_rate * frame_ms // 1000,
            callback=on_audio,
        )
    except Exception as exc:
        raise _no_device(str(exc) or type(exc).__name__) from None
    with stream:
        while True:
            await ready.wait()
            ready.clear()
            while blocks:
                pcm = resampler.process(as_int16(blocks.popleft()))
                for frame in framer.push(pcm.astype("<i2").tobytes()):
                    yield frame
