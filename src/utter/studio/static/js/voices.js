// Voices page: search, pagination, preview, rename (inline), delete, "generate with this voice".

import { api, pageOf, voicePreviewUrl } from "./api.js";
import { WaveformPlayer } from "./waveform.js";
import { $, alertIn, confirmDialog, debounce, pager, role, show, syncQuery, toast, when, showMatch } from "./ui.js";

const PER_PAGE = 12;
const list = $("#voice-list");
const tpl = $("#voice-row");
const empty = $("#empty");
const search = $("#search");
const listError = $("#list-error");

const q = new URLSearchParams(location.search);
let page = Number(q.get("page")) || 1;
// From the address only when it names one: a search typed before this script ran is kept.
if (q.has("search")) search.value = q.get("search");
const players = new Set();

const renderPager = pager($("#pager"), (p) => load(p));

let loads = 0; // loads started; a response to an older one is stale (a search typed meanwhile)

async function load(p = page) {
  page = Math.max(1, p);
  const mine = ++loads;
  const term = search.value.trim();
  syncQuery({ page, search: term });
  let data;
  try {
    data = pageOf(await api("/api/voices", { params: { page, per_page: PER_PAGE, search: term } }), ["voices"], PER_PAGE);
  } catch (err) {
    if (mine === loads) alertIn(listError, err.message);
    return;
  }
  if (mine !== loads) return; // an older, slower response must not replace a newer list
  alertIn(listError, "");
  if (!data.items.length && page > 1 && data.total > 0) return load(data.pages);
  for (const pl of players) pl.destroy();
  players.clear();
  list.replaceChildren(...data.items.map(row));
  empty.textContent = term ? `No voice matches “${term}”.` : "No voices yet. Clone one to get started.";
  if (!term && !data.items.length) empty.innerHTML = 'No voices yet. <a href="/clone">Clone one</a> to get started.';
  show(empty, !data.items.length);
  renderPager(data.page, data.pages, data.total);
}

function row(v) {
  const el = tpl.content.firstElementChild.cloneNode(true);
  el.dataset.id = v.id;
  const name = role(el, "name");
  name.textContent = v.name;
  const transcript = v.reference_transcript ?? v.transcript;
  const transcriptFree = v.x_vector_only ?? !transcript;
  const meta = [
    v.language,
    transcriptFree ? "transcript-free" : "with transcript",
    v.reference_seconds ? `${Number(v.reference_seconds).toFixed(1)} s reference` : "",
    v.generation_count !== undefined ? `${v.generation_count} generation${v.generation_count === 1 ? "" : "s"}` : "",
    when(v.created_at),
  ].filter(Boolean);
  role(el, "meta").textContent = meta.join(" · ");
  if (transcript) role(el, "meta").title = `Transcript: ${transcript}`;
  showMatch(role(el, "match"), v.match, ["name"]);
  role(el, "generate").href = `/generate?voice=${encodeURIComponent(v.id)}`;

  // Preview: the reference recording, drawn and playable inline.
  const previewBtn = role(el, "preview");
  let player = null;
  previewBtn.addEventListener("click", () => {
    const box = role(el, "player");
    if (!player) {
      player = new WaveformPlayer(box, { src: v.preview_url ?? voicePreviewUrl(v.id), compact: true });
      players.add(player);
      show(box);
      player.ready.then(() => player.play()).catch(() => {});
      previewBtn.textContent = "Hide preview";
    } else {
      players.delete(player);
      player.destroy();
      player = null;
      show(box, false);
      previewBtn.textContent = "▶ Preview";
    }
  });

  // Rename, in place.
  const renameForm = role(el, "rename-form");
  const renameInput = role(el, "rename-input");
  const toggleRename = (on) => {
    show(renameForm, on);
    show(name, !on);
    if (on) {
      renameInput.value = name.textContent;
      renameInput.focus();
      renameInput.select();
    }
  };
  role(el, "rename").addEventListener("click", () => toggleRename(renameForm.hidden));
  role(el, "rename-cancel").addEventListener("click", () => toggleRename(false));
  renameInput.addEventListener("keydown", (e) => e.key === "Escape" && toggleRename(false));
  renameForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const next = renameInput.value.trim();
    if (!next) {
      toast("A voice needs a name.", "error");
      return;
    }
    if (next === name.textContent) return toggleRename(false);
    try {
      const updated = await api(`/api/voices/${encodeURIComponent(v.id)}`, { method: "PATCH", json: { name: next } });
      name.textContent = updated?.name ?? next;
      v.name = name.textContent;
      toggleRename(false);
      toast(`Renamed to “${name.textContent}”.`, "success");
    } catch (err) {
      toast(err.message, "error");
    }
  });

  role(el, "delete").addEventListener("click", async () => {
    const ok = await confirmDialog({
      title: `Delete “${v.name}”?`,
      message: "The voice and its reference audio are removed. Generated audio stays in History.",
    });
    if (!ok) return;
    try {
      await api(`/api/voices/${encodeURIComponent(v.id)}`, { method: "DELETE" });
      toast(`Deleted “${v.name}”.`, "success");
      load();
    } catch (err) {
      toast(err.message, "error");
    }
  });
  return el;
}

search.addEventListener("input", debounce(() => load(1), 250));
load();
