// Design page: describe a voice, make takes (each a new seed) with the VoiceDesign model, keep
// one as a voice of the library (design, then clone: POST /tts/v1/voice-design with save_as).

import { api, fillLanguageSelects } from "./api.js";
import { WaveformPlayer } from "./waveform.js";
import { $, alertIn, busy, role, show, toast } from "./ui.js";

const form = $("#design-form");
const off = $("#design-off");
const description = $("#description");
const language = $("#language");
const sampleText = $("#sample-text");
const errorBox = $("#design-error");
const takeBtn = $("#take-btn");
const takes = $("#takes");
const tpl = $("#take-row");
let takeCount = 0;

/** Whether the server runs a VoiceDesign model (and a Base one to keep voices with). */
async function checkModels() {
  try {
    const models = (await api("/tts/v1/models"))?.data ?? [];
    const kinds = new Set(models.map((m) => m.kind));
    if (!kinds.has("voice_design")) {
      off.textContent =
        "Designing voices needs the VoiceDesign model: start the studio with " +
        "UTTER_EXTRA_MODELS=Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign (or --extra-models).";
      show(off);
      takeBtn.disabled = true;
    }
  } catch (err) {
    off.textContent = `The voice design service cannot be reached: ${err.message}`;
    show(off);
  }
}

function audioBlob(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "audio/wav" });
}

function addTake(take) {
  takeCount += 1;
  const el = tpl.content.firstElementChild.cloneNode(true);
  role(el, "title").textContent = `Take ${takeCount}`;
  role(el, "meta").textContent = `seed ${take.seed} · ${take.language} · “${take.text}”`;
  new WaveformPlayer(role(el, "player"), { blob: audioBlob(take.audio_base64) });
  const keepForm = role(el, "keep-form");
  keepForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = role(el, "name").value.trim();
    if (!name) {
      role(el, "name").focus();
      return;
    }
    const done = busy(role(el, "keep"), "Keeping…");
    try {
      const kept = await api("/tts/v1/voice-design", {
        method: "POST",
        json: { description: take.description, language: take.language, text: take.text, seed: take.seed, save_as: name },
      });
      const voice = kept.voice;
      const link = document.createElement("a");
      link.href = `/generate?voice=${encodeURIComponent(voice.id)}`;
      link.textContent = "Generate with it";
      role(el, "kept").replaceChildren(`Kept as “${voice.name}”. `, link);
      show(role(el, "kept"));
      show(keepForm, false);
      toast(`Voice “${voice.name}” added to your voices.`, "success");
    } catch (err) {
      toast(err.message, "error");
    } finally {
      done();
    }
  });
  takes.prepend(el);
  show($("#takes-empty"), false);
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  alertIn(errorBox, "");
  const text = description.value.trim();
  if (!text) {
    alertIn(errorBox, "Describe the voice first.");
    description.focus();
    return;
  }
  const body = { description: text, language: language.value || "Auto" };
  if (sampleText.value.trim()) body.text = sampleText.value.trim();
  const done = busy(takeBtn, "Making a take…");
  try {
    addTake(await api("/tts/v1/voice-design", { method: "POST", json: body }));
  } catch (err) {
    alertIn(errorBox, err.message);
  } finally {
    done();
  }
});

fillLanguageSelects("Auto");
checkModels();
