"""Talking to the page: the fake microphone plays speech_wav into the AudioWorklet, the
page streams 50 ms PCM16 frames to /v1/realtime, and the service relays them to the
speech-to-text emulator, whose turns drive the replies."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from realtime.audio import downmix, float32_to_int16, int16_to_float32, read_wav, resample

ROOT = Path(__file__).resolve().parents[2]
FRAME_BYTES = 1600  # 50 ms of 16 kHz PCM16
FRAME_SAMPLES = FRAME_BYTES // 2

# Runs the page's AudioWorklet offline over the given interleaved PCM16 and returns the frames
# it posted (each as a list of samples).
RUN_WORKLET = """async ({rate, channels, pcm}) => {
  const frames = pcm.length / channels;
  const ctx = new OfflineAudioContext(channels, frames, rate);
  await ctx.audioWorklet.addModule('/web/capture-worklet.js');
  const buffer = ctx.createBuffer(channels, frames, rate);
  for (let c = 0; c < channels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < frames; i++) data[i] = pcm[i * channels + c] / 32768;
  }
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  const node = new AudioWorkletNode(ctx, 'pcm16-capture', {
    numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], channelCountMode: 'max'});
  const out = [];
  node.port.onmessage = (event) => out.push(Array.from(new Int16Array(event.data)));
  source.connect(node);
  node.connect(ctx.destination);
  source.start();
  await ctx.startRendering();
  const expected = Math.floor(Math.floor(frames * 16000 / rate) / 800) - 1;
  const until = Date.now() + 5000;
  while (out.length < expected && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return out;
}"""

# Records, per reply element, every text it showed and the status at that moment.
RECORD_REPLIES = """() => {
  window.__replies = {};
  const seen = (li) => {
    const id = li.dataset.responseId;
    const text = li.querySelector('.text').textContent;
    const log = (window.__replies[id] ||= []);
    const last = log[log.length - 1];
    if (!last || last.text !== text || last.status !== li.dataset.status) {
      log.push({text, status: li.dataset.status});
    }
  };
  new MutationObserver((records) => {
    for (const r of records) {
      const node = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      const li = node && node.closest && node.closest('li.reply');
      if (li) seen(li);
      for (const added of r.addedNodes) {
        if (added.nodeType === 1 && added.matches('li.reply')) seen(added);
      }
    }
  }).observe(document.getElementById('transcript'),
             {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def words_of(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", "", text).lower().split())


def envelope(pcm: np.ndarray, rate: int = 16000) -> np.ndarray:
    """Loudness of each 50 ms frame in dB (floor -60), of PCM16 read as `rate` Hz."""
    frame = rate // 20
    n = len(pcm) // frame
    x = pcm[: n * frame].astype(np.float64).reshape(n, frame) / 32768
    return np.asarray(20 * np.log10(np.maximum(np.sqrt(np.mean(x * x, axis=1)), 1e-3)))


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 60) -> float:
    """The highest correlation of two envelopes over lags of up to `max_lag` frames."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        k = min(len(x), len(y))
        if k >= 40 and np.std(x[:k]) > 0 and np.std(y[:k]) > 0:
            best = max(best, float(np.corrcoef(x[:k], y[:k])[0, 1]))
    return best


def test_talk_caption_reply_and_barge_in(web, stack, speech_wav, artifacts) -> None:
    """The first scripted turn's caption appears; its reply is interrupted by the second turn
    (marked so); the second turn's reply grows over several DOM updates to `done`, with its
    time to first token and total. Every binary frame the page sent is 1600 bytes (50 ms of
    16 kHz PCM16), and read at 16 kHz its audio follows the WAV's loudness contour."""
    sent: list[bytes] = []
    page = web.page(None)

    def on_socket(ws: Any) -> None:
        ws.on(
            "framesent",
            lambda payload: sent.append(payload) if isinstance(payload, bytes) else None,
        )

    page.on("websocket", on_socket)
    page.goto(stack.url + "/")
    page.wait_for_selector("#status[data-state=open]")
    page.evaluate(RECORD_REPLIES)
    page.click("#mic")
    page.wait_for_selector("#mic[aria-pressed=true]")

    first, second = speech_wav.turns
    caption = page.locator("li.user[data-turn-order='0']")
    caption.wait_for()
    page.wait_for_selector("li.user[data-turn-order='0'][data-state=formatted]")
    assert caption.locator(".text").text_content() == first

    interrupted = page.locator("li.reply[data-status=interrupted]")
    interrupted.wait_for()
    assert interrupted.get_attribute("data-turn-order") == "0"
    assert "interrupted" in interrupted.locator(".meta").text_content()

    page.wait_for_selector("li.user[data-turn-order='1'][data-state=formatted]")
    assert page.locator("li.user[data-turn-order='1'] .text").text_content() == second
    done = page.locator("li.reply[data-turn-order='1'][data-status=done]")
    done.wait_for()
    meta = done.locator(".meta").text_content()
    assert re.fullmatch(r"first token \d+ ms · total \d+ ms", meta), meta
    page.screenshot(path=str(artifacts / "talk.png"), full_page=True)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":  # the README's picture
        page.screenshot(path=str(ROOT / "docs" / "browser.png"), full_page=True)
    page.click("#mic")
    page.wait_for_selector("#mic[aria-pressed=false]")

    history = page.evaluate("window.__replies")
    rid = done.get_attribute("data-response-id")
    growth = [e for e in history[rid] if e["status"] == "streaming" and e["text"]]
    assert len({e["text"] for e in growth}) >= 3, growth
    texts = [e["text"] for e in growth]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert history[rid][-1]["status"] == "done"

    binary = [f for f in sent if isinstance(f, bytes)]
    assert binary and all(len(f) == FRAME_BYTES for f in binary), {len(f) for f in binary}
    # Read as 16 kHz, what the page sent has the WAV's loudness contour at the WAV's pace.
    sent_envelope = envelope(np.frombuffer(b"".join(binary), dtype="<i2"))
    wav_envelope = envelope(read_wav(speech_wav.path, 16000))
    correlation = best_correlation(sent_envelope, wav_envelope)
    assert correlation >= 0.8, (correlation, speech_wav.voices)
    assert web.console_errors == []


def test_worklet_resamples_like_realtime_audio(web, stack) -> None:
    """The page's AudioWorklet (down-mix, resample, PCM16, framing) run offline in Chromium
    over stereo input at 48 and 44.1 kHz gives 800-sample frames whose samples agree with
    realtime/audio.py's down-mix and resampler within 1 LSB RMS."""
    page = web.page(stack.url + "/")
    page.wait_for_selector("#status[data-state=open]")
    rng = np.random.default_rng(9)
    for rate in (48000, 44100):
        n = rate  # one second
        t = np.arange(n) / rate
        left = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)
        right = 0.3 * np.sin(2 * np.pi * 3100 * t) * np.sin(2 * np.pi * 2 * t)
        stereo = np.stack([left, right], axis=1).reshape(-1)
        pcm = np.clip(np.rint(stereo * 32767), -32768, 32767).astype(np.int16)
        frames = page.evaluate(RUN_WORKLET, {"rate": rate, "channels": 2, "pcm": pcm.tolist()})
        assert frames and all(len(f) == FRAME_SAMPLES for f in frames), rate
        browser = np.concatenate([np.asarray(f, dtype=np.float64) for f in frames])
        mono = downmix(int16_to_float32(pcm), 2)
        python = float32_to_int16(resample(mono, rate, 16000)).astype(np.float64)
        assert len(browser) <= len(python)
        diff = browser - python[: len(browser)]
        assert float(np.sqrt(np.mean(diff * diff))) <= 1.0, rate
    assert web.console_errors == []
