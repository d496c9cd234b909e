// Gapless playback of streamed 24 kHz pcm16, with an exact count of what was actually played.
//
// Each delta becomes an AudioBuffer scheduled right after the previous one on the AudioContext clock, so
// chunks that arrive faster than real time queue up without gaps. What was heard is computed from the
// clock (not from what was scheduled): that is what a barge-in truncates the assistant's item to.

export const RATE = 24000;
const LEAD = 0.06; // seconds of scheduling headroom when the queue has run dry

export class Player {
  constructor(ctx, onIdle) {
    this.ctx = ctx;
    this.onIdle = onIdle;
    this.out = ctx.createGain();
    this.out.connect(ctx.destination);
    this.nextTime = 0;
    this.itemId = null; // the assistant item whose audio is queued or playing
    this.chunks = []; // {src, start, samples, played?} of that item
    this.receivedSamples = 0; // of that item
    this.earlierPlayed = 0; // samples played of items before it
  }

  // Samples of `chunk` played by now (frozen once the chunk was stopped).
  static playedOf(chunk, now) {
    if (chunk.played !== undefined) return chunk.played;
    return Math.min(chunk.samples, Math.max(0, Math.round((now - chunk.start) * RATE)));
  }

  itemPlayedSamples() {
    const now = this.ctx.currentTime;
    let n = 0;
    for (const c of this.chunks) n += Player.playedOf(c, now);
    return n;
  }

  get playedSamples() {
    return this.earlierPlayed + this.itemPlayedSamples();
  }

  // True while queued audio has not finished playing.
  get playing() {
    return this.chunks.length > 0 && this.ctx.currentTime < this.nextTime;
  }

  enqueue(itemId, pcm) {
    if (pcm.length === 0) return;
    if (itemId !== this.itemId) this._nextItem(itemId);
    const buffer = this.ctx.createBuffer(1, pcm.length, RATE);
    const data = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.out);
    const start = Math.max(this.nextTime, this.ctx.currentTime + LEAD);
    src.start(start);
    this.nextTime = start + pcm.length / RATE;
    const chunk = { src, start, samples: pcm.length };
    src.onended = () => {
      if (this.chunks.includes(chunk) && !this.playing) this.onIdle();
    };
    this.chunks.push(chunk);
    this.receivedSamples += pcm.length;
  }

  // Stops playback at once. Returns {itemId, playedSamples, receivedSamples, cut} for the item that was playing, where
  // cut says whether some of its received audio went unplayed; null when nothing was queued.
  stop() {
    if (this.itemId === null) return null;
    const now = this.ctx.currentTime;
    let played = 0;
    for (const c of this.chunks) {
      c.played = Player.playedOf(c, now);
      played += c.played;
      if (c.played < c.samples) {
        try {
          c.src.stop();
        } catch {
          // not started yet in some engines: disconnecting silences it anyway
        }
        c.src.disconnect();
      }
    }
    this.nextTime = now;
    const received = this.receivedSamples;
    const stopped = { itemId: this.itemId, playedSamples: played, receivedSamples: received, cut: played < received };
    this._nextItem(null); // a second stop has nothing to cut
    return stopped;
  }

  _nextItem(itemId) {
    this.earlierPlayed += this.itemPlayedSamples();
    this.itemId = itemId;
    this.chunks = [];
    this.receivedSamples = 0;
  }
}

// An audio delta's base64 as pcm16 samples (little-endian, as every browser's platform).
export function fromBase64(b64) {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length & ~1);
  for (let i = 0; i < bytes.length; i++) bytes[i] = s.charCodeAt(i);
  return new Int16Array(bytes.buffer);
}
