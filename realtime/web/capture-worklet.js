// AudioWorklet processor: microphone in, 50 ms frames of 16 kHz mono PCM16 out.
//
// Each render quantum (128 frames at the context's rate) is down-mixed to mono (the channels'
// average), resampled to 16 kHz by the same filter as realtime/audio.py, converted to PCM16 and
// cut into frames of exactly 800 samples (1600 bytes). Each frame is posted to the page as a
// transferred ArrayBuffer, which sends it as one binary WebSocket message.
import { Resampler, toPcm16 } from "./resampler.js";

const TARGET_RATE = 16000;
const FRAME_MS = 50;

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    // `sampleRate` is the AudioWorkletGlobalScope's: the context's rate (often 48000 or 44100).
    this.resampler = new Resampler(sampleRate, TARGET_RATE);
    this.frameSamples = (TARGET_RATE * FRAME_MS) / 1000;
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const n = channels[0].length;
      const mono = new Float32Array(n);
      for (const channel of channels) {
        for (let i = 0; i < n; i++) mono[i] += channel[i];
      }
      if (channels.length > 1) {
        for (let i = 0; i < n; i++) mono[i] /= channels.length;
      }
      this.push(toPcm16(this.resampler.process(mono)));
    }
    return this.running;
  }

  push(pcm) {
    let at = 0;
    while (at < pcm.length) {
      const take = Math.min(pcm.length - at, this.frameSamples - this.filled);
      this.frame.set(pcm.subarray(at, at + take), this.filled);
      this.filled += take;
      at += take;
      if (this.filled === this.frameSamples) {
        const buffer = this.frame.buffer;
        this.port.postMessage(buffer, [buffer]);
        this.frame = new Int16Array(this.frameSamples);
        this.filled = 0;
      }
    }
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
