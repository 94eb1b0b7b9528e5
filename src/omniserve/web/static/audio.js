// Speech out and speech in: gapless playback of the stream's PCM16 24 kHz chunks, WAV files of
// a reply, microphone recordings turned into 16 kHz mono WAV (a format the API accepts,
// whatever container the browser records in), and the live microphone as 16 kHz PCM16 chunks.

export const OUTPUT_RATE = 24000;
const INPUT_RATE = 16000;
// Scheduling lead: the first chunk starts this far ahead of the audio clock, so that a chunk
// decoded a little late still joins its predecessor without a click.
const LEAD_S = 0.08;

/** Plays PCM16 little-endian mono chunks back to back as they arrive. */
export class PcmPlayer {
  constructor(ctx, trace = () => {}) {
    this.ctx = ctx;
    this.trace = trace;
    this.gain = ctx.createGain();
    this.gain.connect(ctx.destination);
    this.next = 0;
    this.sources = new Set();
    this.carry = null; // an odd trailing byte, joined to the next chunk
    this.firstStart = null; // audio-clock time the first chunk starts at
    this.underruns = 0;
    this.chunks = 0; // chunks scheduled
    this.stopped = false;
  }

  push(bytes) {
    if (this.stopped || bytes.length === 0) return;
    if (this.carry !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.carry;
      joined.set(bytes, 1);
      bytes = joined;
      this.carry = null;
    }
    if (bytes.length % 2 === 1) {
      this.carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    const samples = pcm16ToFloat(bytes);
    if (samples.length === 0) return;
    const buffer = this.ctx.createBuffer(1, samples.length, OUTPUT_RATE);
    buffer.copyToChannel(samples, 0);
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    const now = this.ctx.currentTime;
    if (this.next < now) {
      if (this.firstStart !== null) this.underruns += 1;
      this.next = now + LEAD_S;
    }
    source.start(this.next);
    if (this.firstStart === null) {
      this.firstStart = this.next;
      this.trace("audio-scheduled", { at: this.next, clock: now });
      source.addEventListener("ended", () => this.trace("audio-first-chunk-played", {}));
    }
    this.next += buffer.duration;
    this.chunks += 1;
    this.sources.add(source);
    source.addEventListener("ended", () => this.sources.delete(source));
  }

  /** True once the audio clock has passed the first chunk's start. */
  get playing() {
    return this.firstStart !== null && this.ctx.currentTime >= this.firstStart;
  }

  /** Seconds of scheduled audio not yet played. */
  get pending() {
    return Math.max(0, this.next - this.ctx.currentTime);
  }

  stop() {
    this.stopped = true;
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        // never started: nothing to stop
      }
    }
    this.sources.clear();
    this.gain.disconnect();
  }
}

export function pcm16ToFloat(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

/** Base64 of bytes, in slices (one call per byte would be slow, one call for all may overflow). */
export function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/** A WAV file (PCM16 mono) from chunks of headerless PCM16 little-endian bytes. */
export function wavBlob(chunks, rate = OUTPUT_RATE) {
  const size = chunks.reduce((n, c) => n + c.byteLength, 0) & ~1;
  const header = new ArrayBuffer(44);
  const v = new DataView(header);
  const ascii = (at, s) => [...s].forEach((ch, i) => v.setUint8(at + i, ch.charCodeAt(0)));
  ascii(0, "RIFF");
  v.setUint32(4, 36 + size, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); // PCM
  v.setUint16(22, 1, true); // mono
  v.setUint32(24, rate, true);
  v.setUint32(28, rate * 2, true);
  v.setUint16(32, 2, true);
  v.setUint16(34, 16, true);
  ascii(36, "data");
  v.setUint32(40, size, true);
  return new Blob([header, ...chunks], { type: "audio/wav" });
}

function floatToPcm16(samples) {
  const out = new Uint8Array(samples.length * 2);
  const v = new DataView(out.buffer);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(i * 2, s < 0 ? s * 32768 : s * 32767, true);
  }
  return out;
}

/** Any audio the browser can decode, as 16 kHz mono PCM16 WAV, with its duration. */
export async function toWav16k(blob) {
  const decoder = new OfflineAudioContext(1, 1, INPUT_RATE);
  const decoded = await decoder.decodeAudioData(await blob.arrayBuffer());
  const length = Math.max(1, Math.ceil(decoded.duration * INPUT_RATE));
  const offline = new OfflineAudioContext(1, length, INPUT_RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination); // mixed down to mono by the one-channel context
  source.start();
  const rendered = await offline.startRendering();
  const wav = wavBlob([floatToPcm16(rendered.getChannelData(0))], INPUT_RATE);
  return { blob: wav, seconds: decoded.duration };
}

const NO_MICROPHONE = "This browser cannot record audio here (a secure origin is needed: localhost or https).";

/** The microphone, recorded with MediaRecorder until stopped or ``maxSeconds`` have passed. */
export class Recorder {
  constructor({ maxSeconds, onTick, onStop }) {
    this.maxSeconds = maxSeconds;
    this.onTick = onTick;
    this.onStop = onStop;
    this.recorder = null;
    this.stream = null;
    this.timer = null;
  }

  get recording() {
    return this.recorder !== null && this.recorder.state === "recording";
  }

  async start() {
    if (!navigator.mediaDevices || !window.MediaRecorder) throw new Error(NO_MICROPHONE);
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    this.recorder = new MediaRecorder(this.stream);
    this.recorder.addEventListener("dataavailable", (e) => {
      if (e.data.size > 0) chunks.push(e.data);
    });
    const started = performance.now();
    this.recorder.addEventListener("stop", () => {
      clearInterval(this.timer);
      this.stream.getTracks().forEach((t) => t.stop());
      const type = this.recorder.mimeType || "audio/webm";
      this.recorder = null;
      this.onStop(new Blob(chunks, { type }));
    });
    this.recorder.start(250);
    this.timer = setInterval(() => {
      const seconds = (performance.now() - started) / 1000;
      this.onTick(seconds);
      if (seconds >= this.maxSeconds) this.stop();
    }, 200);
  }

  stop() {
    if (this.recording) this.recorder.stop();
  }
}

const worklets = new WeakSet(); // contexts that have loaded the capture worklet

/**
 * The live microphone as 16 kHz PCM16 mono chunks of 100 ms (``onChunk(Uint8Array)``) and its
 * level in [0, 1] (``onLevel``). An AudioWorklet resamples it off the main thread.
 */
export class Microphone {
  static async open(ctx, { onChunk, onLevel = () => {}, onEnded = () => {} }) {
    if (!navigator.mediaDevices || !window.AudioWorkletNode) throw new Error(NO_MICROPHONE);
    if (!worklets.has(ctx)) {
      await ctx.audioWorklet.addModule(new URL("./mic-worklet.js", import.meta.url));
      worklets.add(ctx);
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    return new Microphone(ctx, stream, { onChunk, onLevel, onEnded });
  }

  constructor(ctx, stream, { onChunk, onLevel, onEnded }) {
    this.stream = stream;
    this.source = ctx.createMediaStreamSource(stream);
    this.node = new AudioWorkletNode(ctx, "microphone-chunks", { numberOfInputs: 1, numberOfOutputs: 1 });
    // The node must reach the destination to be pulled; a silent gain keeps it inaudible.
    this.mute = ctx.createGain();
    this.mute.gain.value = 0;
    this.source.connect(this.node).connect(this.mute).connect(ctx.destination);
    this.node.port.onmessage = (event) => {
      if (event.data.pcm) onChunk(new Uint8Array(event.data.pcm));
      else onLevel(event.data.level);
    };
    this.closed = false;
    for (const track of stream.getAudioTracks()) {
      track.addEventListener("ended", () => {
        if (!this.closed) onEnded();
      });
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.node.port.postMessage("stop");
    this.node.port.onmessage = null;
    this.source.disconnect();
    this.node.disconnect();
    this.mute.disconnect();
    this.stream.getTracks().forEach((t) => t.stop());
  }
}
