// Runs on the audio thread: the microphone, mixed down to mono and resampled from the
// context's rate to 16 kHz, goes to the page as PCM16 chunks of 100 ms, with its level.

const TARGET_RATE = 16000;
const CHUNK = 1600; // samples of 16 kHz: 100 ms, 3200 bytes, the realtime API's usual append
const LEVEL_EVERY = 640; // samples of 16 kHz: the level meter moves every 40 ms

class MicrophoneChunks extends AudioWorkletProcessor {
  constructor() {
    super();
    // `sampleRate` is the context's rate, a global of the worklet scope.
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.boundary = this.step; // where the output sample being averaged ends, in input samples
    this.position = 0; // input samples seen in the current period
    this.sum = 0;
    this.count = 0;
    this.last = 0;
    this.out = new Int16Array(CHUNK);
    this.filled = 0;
    this.power = 0;
    this.levelCount = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.running = false;
    };
  }

  emit(value) {
    const s = Math.max(-1, Math.min(1, value));
    this.out[this.filled++] = s < 0 ? s * 32768 : s * 32767;
    this.power += s * s;
    if (++this.levelCount === LEVEL_EVERY) {
      this.port.postMessage({ level: Math.sqrt(this.power / LEVEL_EVERY) });
      this.power = 0;
      this.levelCount = 0;
    }
    if (this.filled === CHUNK) {
      const pcm = this.out.buffer;
      this.port.postMessage({ pcm }, [pcm]);
      this.out = new Int16Array(CHUNK);
      this.filled = 0;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.running) return false;
    if (!channels || channels.length === 0) return true;
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let x = 0;
      for (let c = 0; c < channels.length; c++) x += channels[c][i];
      x /= channels.length;
      // Each output sample is the mean of the input samples it covers: a box filter that
      // keeps most of the aliasing out of speech, at any ratio of rates.
      this.sum += x;
      this.count += 1;
      this.position += 1;
      while (this.position >= this.boundary) {
        if (this.count > 0) this.last = this.sum / this.count;
        this.emit(this.last);
        this.sum = 0;
        this.count = 0;
        this.boundary += this.step;
      }
      if (this.boundary > 1e6) {
        // Keep the counters small so that their fractions stay exact.
        this.position -= 1e6;
        this.boundary -= 1e6;
      }
    }
    return true;
  }
}

registerProcessor("microphone-chunks", MicrophoneChunks);
