// Microphone recording with MediaRecorder. The recording is decoded and re-encoded as a 16-bit
// mono WAV in the browser, so the server receives a plain format whatever codec the browser used.

import { decodeAudio } from "./waveform.js";

export const canRecord = () => !!(navigator.mediaDevices?.getUserMedia && window.MediaRecorder);

export class Recorder {
  constructor({ maxSeconds = 60, onTick = () => {} } = {}) {
    this.maxSeconds = maxSeconds;
    this.onTick = onTick;
    this.recorder = null;
    this.stream = null;
  }

  get recording() {
    return this.recorder?.state === "recording";
  }

  /** Ask for the microphone and start; resolves when recording has begun. */
  async start() {
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (err) {
      throw new Error(
        err.name === "NotAllowedError"
          ? "Microphone access was refused. Allow it in the browser's site settings, or upload a file."
          : "No microphone could be opened. Upload a file instead."
      );
    }
    this.chunks = [];
    this.recorder = new MediaRecorder(this.stream);
    this.recorder.addEventListener("dataavailable", (e) => e.data.size && this.chunks.push(e.data));
    this.stopped = new Promise((resolve) => this.recorder.addEventListener("stop", resolve, { once: true }));
    this.recorder.start(250);
    this.t0 = performance.now();
    this.timer = setInterval(() => {
      const s = (performance.now() - this.t0) / 1000;
      this.onTick(s);
      if (s >= this.maxSeconds) this.stop();
    }, 200);
  }

  /** Stop and return the take as a WAV File. */
  async stop() {
    if (!this.recorder) return null;
    clearInterval(this.timer);
    if (this.recorder.state !== "inactive") this.recorder.stop();
    await this.stopped;
    for (const track of this.stream.getTracks()) track.stop();
    const blob = new Blob(this.chunks, { type: this.recorder.mimeType || "audio/webm" });
    this.recorder = null;
    const buffer = await decodeAudio(await blob.arrayBuffer());
    const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
    return new File([encodeWav(buffer)], `recording-${stamp}.wav`, { type: "audio/wav" });
  }
}

/** An AudioBuffer as a mono 16-bit PCM WAV file (channels averaged). */
export function encodeWav(buffer) {
  const n = buffer.length;
  const sr = buffer.sampleRate;
  const mono = new Float32Array(n);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const d = buffer.getChannelData(c);
    for (let i = 0; i < n; i++) mono[i] += d[i] / buffer.numberOfChannels;
  }
  const out = new DataView(new ArrayBuffer(44 + n * 2));
  const str = (o, s) => [...s].forEach((ch, i) => out.setUint8(o + i, ch.charCodeAt(0)));
  str(0, "RIFF");
  out.setUint32(4, 36 + n * 2, true);
  str(8, "WAVE");
  str(12, "fmt ");
  out.setUint32(16, 16, true);
  out.setUint16(20, 1, true); // PCM
  out.setUint16(22, 1, true); // mono
  out.setUint32(24, sr, true);
  out.setUint32(28, sr * 2, true);
  out.setUint16(32, 2, true);
  out.setUint16(34, 16, true);
  str(36, "data");
  out.setUint32(40, n * 2, true);
  for (let i = 0; i < n; i++) {
    const v = Math.max(-1, Math.min(1, mono[i]));
    out.setInt16(44 + i * 2, v < 0 ? v * 0x8000 : v * 0x7fff, true);
  }
  return out.buffer;
}
