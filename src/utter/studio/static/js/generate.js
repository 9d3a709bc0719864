// Generate page: voice, language, text (with the server's length limit), sampling options; submit
// a job, follow its progress (elapsed and estimated time), then play and download the result.
// The draft text and options are kept in localStorage, so nothing typed is lost.

import { api, fillLanguageSelects, pageOf } from "./api.js";
import { onHealth } from "./app.js";
import { cancelTask, elapsedOf, etaOf, getTask, onTasks, trackTask, unreachableSinceMs } from "./tasks-store.js";
import { LiveWaveform, WaveformPlayer } from "./waveform.js";
import { $, alertIn, busy, clock, limits, role, secs, show, statusLabel, toast } from "./ui.js";

const MAX = Number($("#text").dataset.maxChars) || Number(limits.max_text_chars) || 5000;
const K = { draft: "utter.draft.text", opts: "utter.genopts", voice: "utter.lastVoice", job: "utter.currentJob" };

const form = $("#generate-form");
const voiceSel = $("#voice-select");
const langSel = $("#language");
const text = $("#text");
const counter = $("#char-counter");
const errorBox = $("#generate-error");
const submit = $("#generate-btn");
const job = $("#job");
const result = $("#result");
const OPTS = [
  ["temperature", "#temperature", parseFloat],
  ["top_k", "#top-k", (v) => parseInt(v, 10)],
  ["top_p", "#top-p", parseFloat],
  ["repetition_penalty", "#repetition-penalty", parseFloat],
  ["seed", "#seed", (v) => parseInt(v, 10)],
];

let voices = [];
let presets = []; // preset speakers of a CustomVoice model the studio runs (/tts/v1/audio/voices)
const PRESET = "preset:"; // option values of preset speakers
const instructField = $("#instruct-field");
const instructInput = $("#instruct");
let currentId = localStorage.getItem(K.job);
let shownResultFor = null;
let player = null;
let modelNote = "";

// ---- text and counter ----------------------------------------------------------------------

/** Characters as the server counts them: code points of the trimmed text. */
const charCount = (v) => [...v.trim()].length;

function updateCounter() {
  const n = charCount(text.value);
  counter.textContent = `${n.toLocaleString()} / ${MAX.toLocaleString()}`;
  counter.classList.toggle("over", n > MAX);
  counter.classList.toggle("near", n <= MAX && n > MAX * 0.9);
  text.setAttribute("aria-invalid", n > MAX ? "true" : "false");
}
text.addEventListener("input", () => {
  updateCounter();
  localStorage.setItem(K.draft, text.value);
  if (errorBox.textContent && text.value.trim() && charCount(text.value) <= MAX) alertIn(errorBox, "");
});

// ---- options -------------------------------------------------------------------------------

function saveOpts() {
  const o = { greedy: $("#greedy").checked };
  for (const [k, sel] of OPTS) o[k] = $(sel).value;
  localStorage.setItem(K.opts, JSON.stringify(o));
}
function restoreOpts() {
  try {
    const o = JSON.parse(localStorage.getItem(K.opts) || "{}");
    if (typeof o.greedy === "boolean") $("#greedy").checked = o.greedy;
    for (const [k, sel] of OPTS) if (o[k] !== undefined) $(sel).value = o[k];
    if (Object.values(o).some((v) => v !== "" && v !== false)) $("#advanced").open = true;
  } catch {
    /* ignore a damaged entry */
  }
}
function syncSampling() {
  for (const sel of ["#temperature", "#top-k", "#top-p"]) $(sel).disabled = $("#greedy").checked;
}
$("#advanced").addEventListener("input", () => {
  syncSampling();
  saveOpts();
});
$("#seed-random").addEventListener("click", () => {
  $("#seed").value = Math.floor(Math.random() * 2 ** 31);
  saveOpts();
});
$("#reset-options").addEventListener("click", () => {
  $("#greedy").checked = false;
  for (const [, sel] of OPTS) $(sel).value = "";
  syncSampling();
  saveOpts();
});

/** The options the user set, as the API expects them; throws with a message when one is invalid. */
function options() {
  const out = $("#greedy").checked ? { greedy: true } : {};
  for (const [key, sel, parse] of OPTS) {
    const el = $(sel);
    if (el.disabled || el.value.trim() === "") continue;
    const label = el.closest(".field").querySelector(".label").textContent;
    const v = parse(el.value);
    // Range only: any decimal is fine for the float options (the step just sets the arrows' increment).
    const bad = el.validity.badInput || el.validity.rangeUnderflow || el.validity.rangeOverflow;
    const notInt = el.step === "1" && !Number.isInteger(Number(el.value));
    if (!Number.isFinite(v) || bad || notInt) {
      const range = el.min !== "" && el.max !== "" ? ` between ${el.min} and ${el.max}` : el.min !== "" ? ` of at least ${el.min}` : "";
      $("#advanced").open = true;
      el.focus();
      throw new Error(`${label} must be ${notInt ? "a whole number" : "a number"}${range}.`);
    }
    out[key] = v;
  }
  return out;
}

// ---- voices --------------------------------------------------------------------------------

async function loadVoices() {
  const wanted = new URLSearchParams(location.search).get("voice") ?? localStorage.getItem(K.voice);
  try {
    voices = [];
    for (let page = 1; page <= 20; page++) {
      const p = pageOf(await api("/api/voices", { params: { page, per_page: 100 } }), ["voices"], 100);
      voices.push(...p.items);
      if (page >= p.pages || !p.items.length) break;
    }
  } catch (err) {
    voiceSel.replaceChildren(new Option("Could not load voices", ""));
    alertIn(errorBox, err.message);
    return;
  }
  try {
    const listed = (await api("/tts/v1/audio/voices"))?.voices ?? [];
    presets = listed.filter((v) => v.category === "premade");
  } catch {
    presets = []; // no local engine (remote TTS) or no CustomVoice model: cloned voices only
  }
  show($("#no-voices"), voices.length === 0 && presets.length === 0);
  const opts = voices.map((v) => {
    return new Option(v.name + (v.reference_transcript === null ? " (transcript-free)" : ""), String(v.id));
  });
  const groups = [];
  if (presets.length) {
    const mine = document.createElement("optgroup");
    mine.label = "Your voices";
    mine.append(...opts);
    const preset = document.createElement("optgroup");
    preset.label = "Preset speakers";
    preset.append(...presets.map((p) => new Option(p.name, PRESET + p.name)));
    groups.push(mine, preset);
  } else {
    groups.push(...opts);
  }
  const any = voices.length || presets.length;
  voiceSel.replaceChildren(new Option(any ? "Choose a voice…" : "No voices yet", ""), ...groups);
  const values = [...voiceSel.options].map((o) => o.value);
  if (wanted && values.includes(String(wanted))) voiceSel.value = String(wanted);
  else if (voices.length === 1 && !presets.length) voiceSel.value = String(voices[0].id);
  syncInstruct();
}

/** The instruction field shows for a preset speaker whose model follows instructions. */
function syncInstruct() {
  const preset = presets.find((p) => PRESET + p.name === voiceSel.value);
  show(instructField, Boolean(preset?.instructions));
}
/** Speak in the voice's own language unless the user picked one. */
function followVoiceLanguage() {
  const v = voices.find((x) => String(x.id) === voiceSel.value);
  if (v?.language && [...langSel.options].some((o) => o.value === v.language) && langSel.dataset.touched !== "1") {
    langSel.value = v.language;
  }
}
voiceSel.addEventListener("change", () => {
  localStorage.setItem(K.voice, voiceSel.value);
  followVoiceLanguage();
  syncInstruct();
});
langSel.addEventListener("change", () => (langSel.dataset.touched = "1"));

// ---- submit --------------------------------------------------------------------------------

function validate() {
  if (!voices.length && !presets.length) return ["Clone a voice first: there is no voice to speak with.", voiceSel];
  if (!voiceSel.value) return ["Pick a voice.", voiceSel];
  const n = charCount(text.value);
  if (!n) return ["Type some text to speak.", text];
  if (n > MAX) {
    const over = n - MAX;
    return [`The text is ${n.toLocaleString()} characters; the limit is ${MAX.toLocaleString()}. Shorten it by ${over.toLocaleString()}.`, text];
  }
  return [null, null];
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  await voicesLoaded; // a quick click must not find the list still empty
  const [problem, field] = validate();
  alertIn(errorBox, problem);
  if (problem) {
    field?.focus();
    return;
  }
  let body;
  try {
    const who = voiceSel.value.startsWith(PRESET)
      ? { speaker: voiceSel.value.slice(PRESET.length), instruct: instructField.hidden ? undefined : instructInput.value.trim() || undefined }
      : { voice_id: voices.find((v) => String(v.id) === voiceSel.value).id };
    body = { ...who, text: text.value, language: langSel.value, ...options() };
  } catch (err) {
    alertIn(errorBox, err.message);
    return;
  }
  const done = busy(submit, "Submitting…");
  try {
    const res = await api("/api/generate", { method: "POST", json: body });
    const voiceName = voiceSel.selectedOptions[0]?.textContent ?? "";
    const entry = trackTask({ ...res, id: res.task_id ?? res.id }, { title: text.value.slice(0, 140), voiceName });
    currentId = String(entry.id);
    localStorage.setItem(K.job, currentId);
    shownResultFor = null;
    player?.destroy();
    show(result, false);
    renderJob(getTask(currentId));
  } catch (err) {
    alertIn(errorBox, err.message);
  } finally {
    done();
  }
});
text.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
});

// ---- the running job -----------------------------------------------------------------------

function renderJob(t) {
  if (!t) return;
  show(job);
  show($("#idle-hint"), false);
  const badge = role(job, "status");
  badge.dataset.status = t.status;
  badge.textContent = statusLabel[t.status] ?? t.status;
  const pct = Math.round(t.progress * 100);
  const bar = role(job, "progress");
  role(bar, "bar").style.width = `${t.progress * 100}%`;
  bar.setAttribute("aria-valuenow", String(pct));
  bar.classList.toggle("indeterminate", t.status === "queued");
  bar.dataset.status = t.status;
  role(job, "percent").textContent = `${pct}%`;
  let msg = t.message || "";
  if (t.status === "queued" && !msg) msg = modelNote || "Waiting for its turn…";
  if (t.status === "failed") msg = "";
  if (t.status === "cancelled") msg = "Cancelled.";
  role(job, "message").textContent = msg;
  role(job, "cancel").hidden = ["completed", "failed", "cancelled"].includes(t.status);
  // Hear it while it is made: the job's audio so far, then as it comes (one gapless stream).
  const live = role(job, "live");
  const listening = live.dataset.task === String(t.id);
  role(job, "listen").hidden = t.status !== "running" || listening;
  tickTimes(t);
  if (t.status === "failed") alertIn(errorBox, `Generation failed: ${t.error || "unknown error"}`);
  if (t.status === "completed" && shownResultFor !== String(t.id)) showResult(t);
}

function tickTimes(t) {
  role(job, "elapsed").textContent = clock(elapsedOf(t));
  const eta = etaOf(t);
  const stopped = t.status === "cancelled" || t.status === "failed";  // no time left to estimate
  role(job, "eta").textContent =
    t.status === "completed"
      ? "done"
      : unreachableSinceMs() !== null && !stopped
        ? "server not answering, retrying"
        : stopped || eta === null
          ? "—"
          : `~${clock(eta)}`;
}

/** The finished generation as the server describes it (its audio URL and timings), if it says. */
async function generationOf(t) {
  if (t.generationId === null || t.generationId === undefined) return {};
  try {
    return (await api(`/api/generations/${encodeURIComponent(t.generationId)}`)) ?? {};
  } catch {
    return {};
  }
}

async function showResult(t) {
  shownResultFor = String(t.id);
  const g = await generationOf(t);
  const url = g.audio_url ?? t.audioUrl;
  if (!url || shownResultFor !== String(t.id)) return;
  show(result);
  player?.destroy();
  player = new WaveformPlayer(role(result, "player"), { src: url });
  const dl = role(result, "download");
  dl.href = url + (url.includes("?") ? "&" : "?") + "download=1";
  dl.download = `utter-${t.generationId ?? t.id}.wav`;
  const took = g.generation_seconds ?? elapsedOf(t);
  player.ready
    .then(({ duration }) => {
      const d = g.duration_seconds ?? duration;
      const parts = [`${secs(d)} of audio`, `made in ${secs(took)}`];
      if (d && took) parts.push(`${(d / took).toFixed(2)}× real time`);
      role(result, "meta").textContent = parts.join(" · ");
    })
    .catch((err) => toast(err.message, "error"));
}

let liveWave = null; // the growing waveform of the job being listened to

role(job, "listen").addEventListener("click", () => {
  const live = role(job, "live");
  live.dataset.task = String(currentId);
  const url = `/api/tasks/${encodeURIComponent(currentId)}/live.wav`;
  live.src = url;
  live.hidden = false;
  role(job, "listen").hidden = true;
  live.play().catch(() => {});
  liveWave?.destroy();
  const box = role(job, "live-wave");
  box.hidden = false;
  liveWave = new LiveWaveform(box, url, live);
});

role(job, "cancel").addEventListener("click", async () => {
  if (!currentId) return;
  try {
    await cancelTask(currentId);
  } catch (err) {
    toast(err.message, "error");
  }
});

onTasks(() => currentId && renderJob(getTask(currentId)));
setInterval(() => {
  const t = currentId && getTask(currentId);
  if (t && !["completed", "failed", "cancelled"].includes(t.status)) tickTimes(t);
}, 250);

// ---- model state ---------------------------------------------------------------------------

onHealth((h) => {
  modelNote =
    h.state === "downloading" ? "Waiting for the model download to finish…"
    : h.state === "loading" ? "Waiting for the model to load…"
    : h.state === "failed" ? "The model is unavailable; see the banner above."
    : "";
  const t = currentId && getTask(currentId);
  if (t) renderJob(t);
});

// ---- start ---------------------------------------------------------------------------------

function prefill() {
  // "Regenerate" in History hands over its text, voice and language through sessionStorage.
  let p = null;
  try {
    p = JSON.parse(sessionStorage.getItem("utter.prefill") || "null");
  } catch {
    p = null;
  }
  sessionStorage.removeItem("utter.prefill");
  text.value = p?.text ?? localStorage.getItem(K.draft) ?? "";
  if (p?.text) localStorage.setItem(K.draft, p.text);
  return p;
}

const pre = prefill();
const preVoice = pre?.voice_id ?? (pre?.options?.speaker ? PRESET + pre.options.speaker : null);
if (preVoice !== undefined && preVoice !== null) {
  const url = new URL(location.href);
  url.searchParams.set("voice", preVoice);
  history.replaceState(null, "", url);
}
if (pre?.options?.instruct) instructInput.value = pre.options.instruct;
updateCounter();
restoreOpts();
if (pre && (pre.seed !== undefined || pre.options)) {
  // Regenerate from History: the same seed and settings make the same audio.
  const o = pre.options || {};
  $("#greedy").checked = Boolean(o.greedy);
  for (const [k, sel] of OPTS) {
    const v = k === "seed" ? pre.seed : o[k];
    $(sel).value = v === undefined || v === null ? "" : v;
  }
  $("#advanced").open = true;
  saveOpts();
}
syncSampling();
const askedLanguage = pre?.language ?? new URLSearchParams(location.search).get("language");
const voicesLoaded = loadVoices();
Promise.all([voicesLoaded, fillLanguageSelects(askedLanguage ?? "Auto")]).then(() => {
  if (askedLanguage) langSel.dataset.touched = "1";
  else followVoiceLanguage();
});
if (currentId && getTask(currentId)) renderJob(getTask(currentId));
