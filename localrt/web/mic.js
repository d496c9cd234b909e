// The microphone: getUserMedia into the capture worklet, which hands back 24 kHz pcm16 chunks.
//
// Also remembers when each chunk was captured, so a server VAD event's audio_end_ms (counted in samples
// of all audio sent) maps back to the moment the user stopped speaking.

const RATE = 24000;
const KEEP = 1500; // chunk timestamps kept (60 s of 40 ms chunks)

export class Mic {
  constructor(ctx, onChunk) {
    this.ctx = ctx;
    this.onChunk = onChunk; // (Int16Array, rms) => void
    this.stream = null;
    this.node = null;
    this.marks = []; // {end: total samples after this chunk, at: performance.now() when it arrived}
    this.sentSamples = 0;
  }

  async open() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    await this.ctx.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
    const source = this.ctx.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.ctx, "pcm16-capture");
    this.node.port.onmessage = (e) => this._chunk(new Int16Array(e.data));
    source.connect(this.node);
    this.node.connect(this.ctx.destination); // keeps it pulled; the worklet writes silence
  }

  // Called with every chunk sent to the server, so sample counts match the server's.
  sent(samples) {
    this.sentSamples += samples;
    this.marks.push({ end: this.sentSamples, at: performance.now() });
    if (this.marks.length > KEEP) this.marks.splice(0, this.marks.length - KEEP);
  }

  // performance.now() at which the sample `ms` milliseconds into the sent audio was captured.
  timeOf(ms) {
    const sample = Math.round((ms * RATE) / 1000);
    for (const m of this.marks) {
      if (m.end >= sample) return m.at - ((m.end - sample) * 1000) / RATE;
    }
    return performance.now();
  }

  close() {
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    if (this.node) this.node.disconnect();
    this.stream = null;
    this.node = null;
  }

  _chunk(pcm) {
    let sum = 0;
    for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
    this.onChunk(pcm, Math.sqrt(sum / Math.max(1, pcm.length)) / 32768);
  }
}

// pcm16 samples as the base64 of input_audio_buffer.append.
export function toBase64(pcm) {
  const bytes = new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
