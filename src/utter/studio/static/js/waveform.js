// A small audio player that draws the waveform on a canvas from the decoded audio (Web Audio API).
// The file is fetched once: the bytes feed both the decoder (for the picture) and an <audio>
// element (for playback, through an object URL). Click or drag the waveform to seek.

const players = new Set();

/** Decode audio bytes to an AudioBuffer without needing a user gesture (offline context). */
export async function decodeAudio(arrayBuffer) {
  const Ctx = window.OfflineAudioContext || window.webkitOfflineAudioContext;
  const ctx = new Ctx(1, 1, 44100);
  return await ctx.decodeAudioData(arrayBuffer);
}

/** Peak amplitude per bucket over all channels (values in 0..1). */
export function peaks(buffer, buckets) {
  const out = new Float32Array(buckets);
  const n = buffer.length;
  const step = n / buckets;
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let b = 0; b < buckets; b++) {
      const start = Math.floor(b * step);
      const end = Math.min(n, Math.floor((b + 1) * step));
      let m = out[b];
      // Stride through long buckets: the picture does not need every sample.
      const stride = Math.max(1, Math.floor((end - start) / 512));
      for (let i = start; i < end; i += stride) {
        const v = Math.abs(data[i]);
        if (v > m) m = v;
      }
      out[b] = m;
    }
  }
  let max = 0;
  for (const v of out) if (v > max) max = v;
  if (max > 0) for (let b = 0; b < buckets; b++) out[b] /= max;
  return out;
}

const fmt = (s, round = Math.floor) => {
  if (!Number.isFinite(s)) return "0:00";
  const t = Math.max(0, round(s));
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, "0")}`;
};

export class WaveformPlayer {
  /**
   * @param {HTMLElement} container where the player goes (its content is replaced)
   * @param {{src?: string, blob?: Blob, compact?: boolean}} opts a URL to fetch, or a Blob/File
   */
  constructor(container, { src = null, blob = null, compact = false } = {}) {
    this.container = container;
    this.buffer = null;
    this.peaks = null;
    this.objectUrl = null;
    this.hover = null;
    this.raf = 0;

    const root = document.createElement("div");
    root.className = "wave-player" + (compact ? " compact" : "");
    root.innerHTML = `
      <button type="button" class="wave-play" aria-label="Play">
        <svg viewBox="0 0 24 24" class="icon-play" aria-hidden="true"><path d="M8 5v14l11-7z"/></svg>
        <svg viewBox="0 0 24 24" class="icon-pause" aria-hidden="true"><path d="M7 5h4v14H7zM13 5h4v14h-4z"/></svg>
      </button>
      <div class="wave-canvas" tabindex="0" role="slider" aria-label="Seek" aria-valuemin="0" aria-valuenow="0">
        <canvas></canvas>
        <span class="wave-status muted small">Loading audio…</span>
      </div>
      <span class="wave-time mono small">0:00 / 0:00</span>`;
    this.audio = document.createElement("audio");
    this.audio.preload = "auto";
    this.audio.className = "wave-audio";
    root.append(this.audio);
    container.replaceChildren(root);
    this.root = root;
    this.btn = root.querySelector(".wave-play");
    this.wrap = root.querySelector(".wave-canvas");
    this.canvas = root.querySelector("canvas");
    this.statusEl = root.querySelector(".wave-status");
    this.timeEl = root.querySelector(".wave-time");

    this.btn.addEventListener("click", () => this.toggle());
    this.audio.addEventListener("play", () => this.onPlayState());
    this.audio.addEventListener("pause", () => this.onPlayState());
    this.audio.addEventListener("ended", () => this.onPlayState());
    this.audio.addEventListener("loadedmetadata", () => this.draw());
    this.audio.addEventListener("timeupdate", () => this.draw());
    this.bindSeeking();
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.wrap);
    players.add(this);

    this.ready = this.load(src, blob);
  }

  async load(src, blob) {
    try {
      let data = blob;
      if (!data) {
        const res = await fetch(src);
        if (!res.ok) throw new Error(res.status === 404 ? "The audio file is gone." : `Could not load the audio (${res.status}).`);
        data = await res.blob();
      }
      this.objectUrl = URL.createObjectURL(data);
      this.audio.src = this.objectUrl;
      try {
        this.buffer = await decodeAudio(await data.arrayBuffer());
        this.statusEl.hidden = true;
      } catch {
        this.statusEl.textContent = "No waveform for this format; playback may still work.";
      }
      this.draw();
      return { duration: this.buffer?.duration ?? null };
    } catch (err) {
      this.statusEl.textContent = err.message || "Could not load the audio.";
      this.root.classList.add("error");
      this.btn.disabled = true;
      throw err;
    }
  }

  get duration() {
    const d = this.audio.duration;
    return Number.isFinite(d) && d > 0 ? d : this.buffer?.duration ?? 0;
  }

  toggle() {
    if (this.audio.paused) this.play();
    else this.audio.pause();
  }

  play() {
    for (const p of players) if (p !== this) p.audio.pause();
    return this.audio.play().catch(() => {});
  }

  onPlayState() {
    const playing = !this.audio.paused && !this.audio.ended;
    this.root.classList.toggle("playing", playing);
    this.btn.setAttribute("aria-label", playing ? "Pause" : "Play");
    cancelAnimationFrame(this.raf);
    if (playing) {
      const tick = () => {
        this.draw();
        this.raf = requestAnimationFrame(tick);
      };
      tick();
    } else this.draw();
  }

  bindSeeking() {
    const at = (e) => {
      const r = this.wrap.getBoundingClientRect();
      return Math.min(1, Math.max(0, (e.clientX - r.left) / r.width));
    };
    let dragging = false;
    this.wrap.addEventListener("pointerdown", (e) => {
      if (!this.duration) return;
      dragging = true;
      this.wrap.setPointerCapture(e.pointerId);
      this.audio.currentTime = at(e) * this.duration;
      this.draw();
    });
    this.wrap.addEventListener("pointermove", (e) => {
      this.hover = at(e);
      if (dragging && this.duration) this.audio.currentTime = this.hover * this.duration;
      this.draw();
    });
    this.wrap.addEventListener("pointerup", () => (dragging = false));
    this.wrap.addEventListener("pointerleave", () => {
      this.hover = null;
      this.draw();
    });
    this.wrap.addEventListener("keydown", (e) => {
      if (!this.duration) return;
      const step = e.shiftKey ? 10 : 2;
      if (e.key === "ArrowRight") this.audio.currentTime = Math.min(this.duration, this.audio.currentTime + step);
      else if (e.key === "ArrowLeft") this.audio.currentTime = Math.max(0, this.audio.currentTime - step);
      else if (e.key === " " || e.key === "Enter") this.toggle();
      else return;
      e.preventDefault();
      this.draw();
    });
  }

  draw() {
    const dur = this.duration;
    const cur = this.audio.currentTime || 0;
    this.timeEl.textContent = `${fmt(cur)} / ${fmt(dur, Math.round)}`;
    this.wrap.setAttribute("aria-valuemax", String(Math.round(dur)));
    this.wrap.setAttribute("aria-valuenow", String(Math.round(cur)));
    this.wrap.setAttribute("aria-valuetext", `${fmt(cur)} of ${fmt(dur)}`);

    const dpr = window.devicePixelRatio || 1;
    const w = this.wrap.clientWidth;
    const h = this.wrap.clientHeight;
    if (!w || !h) return;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(this.root);
    const played = css.getPropertyValue("--wave-played").trim() || "#6d5efc";
    const rest = css.getPropertyValue("--wave-rest").trim() || "#c9cbe0";
    const barW = 3;
    const gap = 1.5;
    const n = Math.max(8, Math.floor(w / (barW + gap)));
    if (this.buffer && (!this.peaks || this.peaks.length !== n)) this.peaks = peaks(this.buffer, n);
    const frac = dur ? cur / dur : 0;
    const mid = h / 2;
    for (let i = 0; i < n; i++) {
      const v = this.peaks ? this.peaks[i] : 0.04;
      const bh = Math.max(2, v * (h - 4));
      const x = i * (barW + gap);
      ctx.fillStyle = (i + 0.5) / n <= frac ? played : rest;
      ctx.beginPath();
      if (ctx.roundRect) ctx.roundRect(x, mid - bh / 2, barW, bh, 1.5);
      else ctx.rect(x, mid - bh / 2, barW, bh);
      ctx.fill();
    }
    if (this.hover !== null && dur) {
      ctx.fillStyle = played;
      ctx.globalAlpha = 0.5;
      ctx.fillRect(Math.round(this.hover * w), 0, 1, h);
      ctx.globalAlpha = 1;
    }
  }

  destroy() {
    this.audio.pause();
    cancelAnimationFrame(this.raf);
    this.resize.disconnect();
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    players.delete(this);
    this.container.replaceChildren();
  }
}

/**
 * The waveform of audio still being made: reads a streamed 16-bit mono WAV (a running job's
 * live.wav) as it arrives and draws one bar per 0.1 s, growing; `audio` (the element playing the
 * same stream) colours what has been heard. `container.dataset.seconds` says how much has come.
 */
export class LiveWaveform {
  constructor(container, url, audio = null, sampleRate = 24000) {
    this.container = container;
    this.audio = audio;
    this.bucket = Math.round(sampleRate / 10);
    this.sampleRate = sampleRate;
    this.bars = [];
    this.current = 0; // peak of the bucket being filled
    this.inBucket = 0;
    this.samples = 0;
    this.abort = new AbortController();
    this.canvas = document.createElement("canvas");
    this.canvas.className = "live-wave";
    this.canvas.setAttribute("aria-label", "Waveform of the audio made so far");
    container.replaceChildren(this.canvas);
    container.dataset.seconds = "0";
    this.tick = () => {
      this.draw();
      this.raf = requestAnimationFrame(this.tick);
    };
    this.raf = requestAnimationFrame(this.tick);
    this.read(url).catch(() => {}); // an aborted or ended stream just stops growing
  }

  async read(url) {
    const res = await fetch(url, { signal: this.abort.signal });
    if (!res.ok || !res.body) return;
    const reader = res.body.getReader();
    let header = 44; // bytes of the WAV header still to skip
    let carry = null; // an odd byte left from the previous read
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      let bytes = value;
      if (header > 0) {
        const skip = Math.min(header, bytes.length);
        header -= skip;
        bytes = bytes.subarray(skip);
      }
      if (carry !== null) {
        const joined = new Uint8Array(bytes.length + 1);
        joined[0] = carry;
        joined.set(bytes, 1);
        bytes = joined;
        carry = null;
      }
      if (bytes.length % 2) {
        carry = bytes[bytes.length - 1];
        bytes = bytes.subarray(0, bytes.length - 1);
      }
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      for (let i = 0; i < bytes.length; i += 2) this.add(Math.abs(view.getInt16(i, true)) / 32768);
      this.container.dataset.seconds = (this.samples / this.sampleRate).toFixed(1);
    }
  }

  add(v) {
    if (v > this.current) this.current = v;
    this.samples += 1;
    if (++this.inBucket === this.bucket) {
      this.bars.push(this.current);
      this.current = 0;
      this.inBucket = 0;
    }
  }

  draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    if (!w || !h) return;
    if (this.canvas.width !== Math.round(w * dpr)) this.canvas.width = Math.round(w * dpr);
    if (this.canvas.height !== Math.round(h * dpr)) this.canvas.height = Math.round(h * dpr);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(this.canvas);
    const played = css.getPropertyValue("--wave-played").trim() || "#6d5efc";
    const rest = css.getPropertyValue("--wave-rest").trim() || "#c9cbe0";
    const n = this.bars.length;
    if (!n) return;
    const step = Math.min(4.5, w / n); // bars shrink to fit as the audio grows
    const heard = this.audio ? (this.audio.currentTime || 0) * 10 : 0;
    const max = Math.max(...this.bars, 0.05);
    for (let i = 0; i < n; i++) {
      const bh = Math.max(2, (this.bars[i] / max) * (h - 4));
      ctx.fillStyle = i < heard ? played : rest;
      ctx.fillRect(i * step, h / 2 - bh / 2, Math.max(1, step - 1.5), bh);
    }
  }

  destroy() {
    this.abort.abort();
    cancelAnimationFrame(this.raf);
    this.container.replaceChildren();
    delete this.container.dataset.seconds;
  }
}
