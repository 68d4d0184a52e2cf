"""Audio helpers for tests: 50 ms PCM frames of a tone or of silence."""

from __future__ import annotations

import numpy as np

RATE = 16000
FRAME = RATE // 20  # 50 ms


def tone(seconds: float, loud: bool) -> list[bytes]:
    """PCM s16le mono frames of 50 ms: a 440 Hz tone, or silence."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    x = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)) if loud else np.zeros(n)
    pcm = x.astype("<i2").tobytes()
    return [pcm[i : i + FRAME * 2] for i in range(0, len(pcm), FRAME * 2)]
