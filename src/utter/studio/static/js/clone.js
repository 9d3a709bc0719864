// Clone page: pick (drag and drop) or record the reference audio, check it here (type, size,
// duration), preview it, have it transcribed (or type the words), then send it. The server checks
// everything again.

import { ApiError, api, fillLanguageSelects } from "./api.js";
import { Recorder, canRecord } from "./recorder.js";
import { WaveformPlayer, decodeAudio } from "./waveform.js";
import { $, alertIn, busy, bytes, clock, limits, role, show, toast } from "./ui.js";

const AUDIO_EXT = ["wav", "wave", "mp3", "flac", "ogg", "oga", "opus", "m4a", "aac", "mp4", "webm"];
const MAX_MB = Number(limits.max_upload_mb) || 20;
const MIN_S = Number(limits.min_ref_seconds) || 1;
const MAX_S = Number(limits.max_ref_seconds) || 60;
const MAX_NAME = Number(limits.max_name_chars) || 100;
const MAX_TRANSCRIPT = Number(limits.max_transcript_chars) || 2000;

const form = $("#clone-form");
const input = $("#audio-input");
const drop = $("#dropzone");
const audioError = $("#audio-error");
const preview = $("#audio-preview");
const formError = $("#clone-error");
const nameInput = $("#voice-name");
const transcript = $("#transcript");
const xvec = $("#x-vector-only");
const recordBtn = $("#record-btn");
const recordTime = $("#record-time");
const submit = $("#clone-btn");
const success = $("#clone-success");
const transcribeBtn = $("#transcribe-btn");
const transcribeStatus = $("#transcribe-status");
const languageSelect = $("#language");

let chosen = null; // {file, duration}
let player = null;
let asrOn = false; // the studio can transcribe (GET /api/asr: anything but "off")

const extOf = (name) => (name.includes(".") ? name.split(".").pop().toLowerCase() : "");

/** Check a candidate reference file; returns {file, duration} or throws an Error with a clear message. */
async function check(file) {
  const ext = extOf(file.name);
  const looksAudio = file.type.startsWith("audio/") || AUDIO_EXT.includes(ext) || file.type === "video/webm";
  if (!looksAudio) {
    throw new Error(`“${file.name}” is not an audio file. Use WAV, MP3, FLAC, OGG, M4A or WebM.`);
  }
  if (file.size === 0) throw new Error(`“${file.name}” is empty.`);
  if (file.size > MAX_MB * 1024 * 1024) {
    throw new Error(`“${file.name}” is ${bytes(file.size)}; the limit is ${MAX_MB} MB. Use a shorter clip.`);
  }
  let buffer;
  try {
    buffer = await decodeAudio(await file.arrayBuffer());
  } catch {
    throw new Error(`“${file.name}” could not be read as audio. Is it damaged, or in an unusual format?`);
  }
  const d = buffer.duration;
  if (d < MIN_S) throw new Error(`The audio is ${d.toFixed(1)} s long; at least ${MIN_S} s of speech is needed.`);
  if (d > MAX_S) {
    throw new Error(`The audio is ${Math.round(d)} s long; the limit is ${MAX_S} s. A clean 5–20 s passage works best.`);
  }
  return { file, duration: d };
}

async function accept(file) {
  alertIn(audioError, "");
  alertIn(formError, "");
  if (!file) return;
  try {
    chosen = await check(file);
  } catch (err) {
    chosen = null;
    clearPreview();
    alertIn(audioError, err.message);
    return;
  }
  role(preview, "name").textContent = file.name;
  role(preview, "meta").textContent = `${chosen.duration.toFixed(1)} s · ${bytes(file.size)}`;
  show(preview);
  player?.destroy();
  player = new WaveformPlayer(role(preview, "player"), { blob: file });
  drop.classList.add("has-file");
  syncTranscribe();
  if (!nameInput.value.trim() && !file.name.startsWith("recording-")) {
    nameInput.value = file.name.replace(/\.[^.]+$/, "").replace(/[_-]+/g, " ").slice(0, MAX_NAME);
  }
}

function clearPreview() {
  player?.destroy();
  player = null;
  show(preview, false);
  drop.classList.remove("has-file");
  input.value = "";
  syncTranscribe();
}

// ---- transcription -------------------------------------------------------------------------

function syncTranscribe() {
  show(transcribeBtn, asrOn);
  transcribeBtn.disabled = !chosen || xvec.checked || transcribeBtn.getAttribute("aria-busy") === "true";
  transcribeBtn.title = chosen ? "Write the transcript from the audio" : "Choose or record the audio first";
}

function say(text) {
  transcribeStatus.textContent = text || "";
  show(transcribeStatus, Boolean(text));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The words of the chosen audio from /api/transcribe; while the model downloads (first use), the
 *  server answers 503 quickly and this shows its progress and asks again. */
async function transcribe() {
  const file = chosen?.file;
  if (!file) return;
  const done = busy(transcribeBtn, "Transcribing…");
  transcribeBtn.setAttribute("aria-busy", "true");
  alertIn(formError, "");
  say("Listening to the recording…");
  try {
    for (;;) {
      const data = new FormData();
      data.set("audio", file, file.name);
      if (languageSelect.value && languageSelect.value !== "Auto") data.set("language", languageSelect.value);
      data.set("wait", "2");
      try {
        const out = await api("/api/transcribe", { method: "POST", form: data });
        if (chosen?.file !== file) return; // another file was chosen meanwhile
        transcript.value = out.text;
        const known = [...languageSelect.options].some((o) => o.value === out.language);
        if (languageSelect.value === "Auto" && known && out.language !== "Auto") languageSelect.value = out.language;
        const lang = out.language !== "Auto" ? out.language : out.language_code;
        say(`Transcribed (${lang}). Check the words and correct any mistakes before cloning.`);
        return;
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 503) throw err;
        const state = await api("/api/asr").catch(() => null);
        if (!state || state.state === "failed" || state.state === "off") throw err;
        const pct = state.progress != null ? ` ${Math.round(state.progress * 100)}%` : "";
        say(
          state.state === "downloading"
            ? `Downloading the speech recognition model${pct} (first use only)…`
            : "Loading the speech recognition model…",
        );
        await sleep(1500);
        if (chosen?.file !== file) return;
      }
    }
  } catch (err) {
    say("");
    alertIn(formError, err.message);
  } finally {
    transcribeBtn.removeAttribute("aria-busy");
    done();
    syncTranscribe();
  }
}

transcribeBtn.addEventListener("click", transcribe);
api("/api/asr")
  .then((s) => {
    asrOn = s?.state !== "off";
    syncTranscribe();
    syncMode();
  })
  .catch(() => {});

// ---- picking a file ------------------------------------------------------------------------

drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    input.click();
  }
});
input.addEventListener("change", () => accept(input.files[0]));
for (const ev of ["dragenter", "dragover"]) {
  drop.addEventListener(ev, (e) => {
    e.preventDefault();
    drop.classList.add("dragging");
  });
}
for (const ev of ["dragleave", "dragend"]) drop.addEventListener(ev, () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("dragging");
  const files = e.dataTransfer?.files;
  if (files?.length > 1) toast("Only the first file is used.", "info");
  accept(files?.[0]);
});
// A file dropped outside the zone must not navigate away from the page (and lose the form).
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
role(preview, "clear").addEventListener("click", () => {
  chosen = null;
  clearPreview();
});

// ---- recording -----------------------------------------------------------------------------

const recorder = new Recorder({ maxSeconds: MAX_S, onTick: (s) => (recordTime.textContent = clock(s)) });
if (!canRecord()) {
  recordBtn.disabled = true;
  recordBtn.title = "This browser cannot record here (recording needs HTTPS or localhost).";
}
recordBtn.addEventListener("click", async () => {
  alertIn(audioError, "");
  if (!recorder.recording) {
    try {
      await recorder.start();
    } catch (err) {
      alertIn(audioError, err.message);
      return;
    }
    recordBtn.classList.add("recording");
    role(recordBtn, "label").textContent = "Stop recording";
    recordTime.textContent = "0:00";
    show(recordTime);
    return;
  }
  recordBtn.disabled = true;
  try {
    const file = await recorder.stop();
    await accept(file);
  } catch {
    alertIn(audioError, "The recording could not be decoded. Try again, or upload a file.");
  } finally {
    recordBtn.disabled = false;
    recordBtn.classList.remove("recording");
    role(recordBtn, "label").textContent = "Record again";
    show(recordTime, false);
  }
});

// ---- transcript-free mode ------------------------------------------------------------------

function syncMode() {
  transcript.disabled = xvec.checked;
  transcript.closest(".field").classList.toggle("disabled", xvec.checked);
  transcript.placeholder = xvec.checked
    ? "Not needed in transcript-free mode."
    : asrOn
      ? "Type the words spoken in the reference audio, or press Transcribe (left empty, it is transcribed when you clone)."
      : "Type the words spoken in the reference audio.";
}
xvec.addEventListener("change", () => {
  syncMode();
  syncTranscribe();
});
for (const el of [nameInput, transcript, xvec]) el.addEventListener("input", () => alertIn(formError, ""));
syncMode();

// ---- submit --------------------------------------------------------------------------------

function validate() {
  if (!chosen) return "Choose or record a reference audio first.";
  const name = nameInput.value.trim();
  if (!name) return "Give the voice a name.";
  if (name.length > MAX_NAME) return `The name is too long (at most ${MAX_NAME} characters).`;
  if (!xvec.checked && !transcript.value.trim() && !asrOn) {
    return "Type the transcript of the audio, or tick transcript-free mode (lower quality).";
  }
  if (!xvec.checked && transcript.value.trim().length > MAX_TRANSCRIPT) {
    return `The transcript is too long (at most ${MAX_TRANSCRIPT.toLocaleString()} characters).`;
  }
  return null;
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const problem = validate();
  alertIn(formError, problem);
  if (problem) {
    (!chosen ? drop : !nameInput.value.trim() ? nameInput : transcript).focus();
    return;
  }
  const data = new FormData();
  data.set("name", nameInput.value.trim());
  data.set("audio", chosen.file, chosen.file.name);
  data.set("language", $("#language").value || "Auto");
  data.set("x_vector_only", xvec.checked ? "true" : "false");
  if (!xvec.checked) data.set("transcript", transcript.value.trim());
  const done = busy(submit, !xvec.checked && !transcript.value.trim() ? "Transcribing and cloning…" : "Cloning…");
  show(success, false);
  try {
    const voice = await api("/api/clone", { method: "POST", form: data });
    const name = voice?.name ?? nameInput.value.trim();
    role(success, "name").textContent = name;
    role(success, "generate").href = `/generate?voice=${encodeURIComponent(voice?.id ?? "")}`;
    show(success);
    if (voice?.transcribed) toast(`Voice “${name}” created; its transcript: “${voice.transcript}”`, "success", 8000);
    else toast(`Voice “${name}” created.`, "success");
    nameInput.value = "";
    transcript.value = "";
    say("");
    chosen = null;
    clearPreview();
    success.scrollIntoView({ behavior: "smooth", block: "nearest" });
  } catch (err) {
    alertIn(formError, err.message);
  } finally {
    done();
  }
});

fillLanguageSelects("Auto");
