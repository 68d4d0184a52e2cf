// Streaming rational resampler: the same polyphase Kaiser-windowed sinc as realtime/audio.py's
// `Resampler` (same filter, same group-delay alignment), so that a browser and the Python
// helpers turn the same input into the same 16 kHz samples (tests/web check: within 1 LSB RMS).
// Pure: no Web Audio here, so the AudioWorklet and the tests import the same code.

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

// Modified Bessel function of the first kind, order 0 (power series; converges fast for the
// window's beta of 8.6).
function besselI0(x) {
  let sum = 1, term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 200; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

function sinc(x) {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

// Kaiser-windowed sinc low-pass at the upsampled rate, split into `up` phases (audio.py's
// `_design_filter`). Returns {phases: Float64Array(up * taps), taps, delay}: phase p's tap t is
// phases[p * taps + t]; `delay` output samples of group delay are dropped at the start.
export function designFilter(up, down, zeroCrossings = 16, rolloff = 0.9) {
  const span = Math.max(up, down);
  const halfUp = (zeroCrossings * span) / rolloff;
  const delay = Math.max(1, Math.ceil(halfUp / down));
  const half = delay * down;
  const length = 2 * half + 1;
  const taps = Math.ceil(length / up);
  const cutoff = rolloff / (2 * span);
  const h = new Float64Array(taps * up);
  const alpha = (length - 1) / 2;
  const i0Beta = besselI0(8.6);
  let total = 0;
  for (let k = 0; k < length; k++) {
    const r = (k - alpha) / alpha;
    const w = besselI0(8.6 * Math.sqrt(Math.max(0, 1 - r * r))) / i0Beta;
    h[k] = 2 * cutoff * sinc(2 * cutoff * (k - half)) * w;
    total += h[k];
  }
  const gain = up / total; // unity DC gain after zero-stuffing by `up`
  const phases = new Float64Array(up * taps);
  for (let p = 0; p < up; p++) {
    for (let t = 0; t < taps; t++) phases[p * taps + t] = h[p + t * up] * gain;
  }
  return { phases, taps, delay };
}

export class Resampler {
  constructor(inRate, outRate = 16000, { zeroCrossings = 16, rolloff = 0.9 } = {}) {
    if (!(inRate > 0 && outRate > 0)) throw new RangeError("sample rates must be positive");
    const g = gcd(inRate, outRate);
    this.inRate = inRate;
    this.outRate = outRate;
    this.up = outRate / g;
    this.down = inRate / g;
    this.passthrough = this.up === this.down;
    const { phases, taps, delay } = designFilter(this.up, this.down, zeroCrossings, rolloff);
    this.phases = phases;
    this.taps = taps;
    this.delay = delay;
    this.history = new Float64Array(taps - 1); // the last taps-1 inputs; zeros before the stream
    this.consumed = 0; // input samples received
    this.nextRaw = 0; // next output index of the causal filter (before dropping the delay)
  }

  // Feed mono samples (any numeric array); returns the output samples they determine, in the
  // input's scale (a Float64Array).
  process(chunk) {
    const n = chunk.length;
    if (this.passthrough) {
      this.consumed += n;
      return Float64Array.from(chunk);
    }
    const { up, down, taps, phases } = this;
    const keep = taps - 1;
    const buf = new Float64Array(keep + n);
    buf.set(this.history, 0);
    for (let i = 0; i < n; i++) buf[keep + i] = chunk[i];
    const base = this.consumed - keep; // stream index of buf[0]
    this.consumed += n;
    const lastIn = this.consumed - 1;
    // causal output m needs input floor(m * down / up) <= lastIn
    const stop = lastIn >= 0 ? Math.floor(((lastIn + 1) * up - 1) / down) + 1 : 0;
    const first = Math.max(this.nextRaw, this.delay);
    const out = new Float64Array(Math.max(0, stop - first));
    for (let m = first, o = 0; m < stop; m++, o++) {
      const j = m * down;
      const newest = Math.floor(j / up) - base;
      const row = (j % up) * taps;
      let acc = 0;
      for (let t = 0; t < taps; t++) acc += buf[newest - t] * phases[row + t];
      out[o] = acc;
    }
    this.nextRaw = Math.max(this.nextRaw, stop);
    this.history = buf.slice(buf.length - keep);
    return out;
  }
}

// Float samples in [-1, 1] to PCM16 (round, clip), as audio.py's `float32_to_int16`.
export function toPcm16(samples, into = new Int16Array(samples.length), offset = 0) {
  for (let i = 0; i < samples.length; i++) {
    const v = Math.round(samples[i] * 32768);
    into[offset + i] = v > 32767 ? 32767 : v < -32768 ? -32768 : v;
  }
  return into;
}
