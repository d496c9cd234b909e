// The microphone's AudioWorklet: mono float samples at the context's rate in, 24 kHz pcm16 out.
//
// Each 128-frame render quantum is averaged to mono, then resampled to 24 kHz by linear interpolation
// after a one-pole low-pass (enough for speech recognition; the server resamples to 16 kHz again).
// Every ~40 ms of output is posted to the page as an ArrayBuffer of little-endian int16 samples.

const OUT_RATE = 24000;
const CHUNK = 960; // 40 ms at 24 kHz

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.pos = 0; // position of the next output sample, in input samples, relative to this.prev
    this.prev = 0; // the last (filtered) input sample of the previous quantum
    this.lp = 0;
    // Low-pass below the new Nyquist frequency when downsampling (a no-op factor at 24 kHz and below).
    this.alpha = this.step > 1 ? Math.min(1, (2 * Math.PI * 10000) / sampleRate) : 1;
    this.out = new Int16Array(CHUNK);
    this.n = 0;
  }

  emit(value) {
    const s = Math.max(-1, Math.min(1, value));
    this.out[this.n++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.n === CHUNK) {
      const buf = this.out.buffer;
      this.port.postMessage(buf, [buf]);
      this.out = new Int16Array(CHUNK);
      this.n = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const frames = input[0].length;
    const mono = new Float32Array(frames);
    for (const channel of input) {
      for (let i = 0; i < frames; i++) mono[i] += channel[i] / input.length;
    }
    for (let i = 0; i < frames; i++) {
      this.lp += this.alpha * (mono[i] - this.lp);
      mono[i] = this.lp;
    }
    // Output sample positions are measured from this.prev (index -1 of this quantum).
    while (this.pos < frames) {
      const x = this.pos - 1; // index into mono; -1 means this.prev
      const i0 = Math.floor(x);
      const frac = x - i0;
      const a = i0 < 0 ? this.prev : mono[i0];
      const b = mono[Math.min(i0 + 1, frames - 1)];
      this.emit(a + (b - a) * frac);
      this.pos += this.step;
    }
    this.pos -= frames;
    this.prev = mono[frames - 1];
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
