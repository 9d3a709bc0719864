// History page: search, status filter, pagination; play, download, regenerate, delete.
// While any listed item is still queued or running, the list refreshes itself.

import { api, generationAudioUrl, normStatus, pageOf } from "./api.js";
import { WaveformPlayer } from "./waveform.js";
import { $, alertIn, confirmDialog, debounce, pager, role, secs, show, statusLabel, syncQuery, toast, when, showMatch } from "./ui.js";

const PER_PAGE = 10;
const list = $("#history-list");
const tpl = $("#history-row");
const empty = $("#empty");
const search = $("#search");
const statusSel = $("#status-filter");
const listError = $("#list-error");

const q = new URLSearchParams(location.search);
let page = Number(q.get("page")) || 1;
// From the address only when it names one: a search typed before this script ran is kept.
if (q.has("search")) search.value = q.get("search");
if (q.has("status")) statusSel.value = q.get("status");
let refresh = null;
const players = new Map(); // generation id -> player kept open across refreshes
let lastKey = "";

/** The sampling settings a generation asked for, in a few words ("" for the defaults). */
function settingsText(options) {
  if (!options) return "";
  const said = options.instruct ? `“${options.instruct}”` : "";
  const rest = samplingText(options);
  return [said, rest].filter(Boolean).join(" · ");
}

function samplingText(options) {
  if (options.greedy) return "greedy";
  const names = { temperature: "temp", top_k: "top-k", top_p: "top-p", repetition_penalty: "rep" };
  return Object.entries(names)
    .filter(([k]) => options[k] !== undefined && options[k] !== null)
    .map(([k, label]) => `${label} ${options[k]}`)
    .join(", ");
}

const renderPager = pager($("#pager"), (p) => load(p));
let only = new URLSearchParams(location.search).get("generation");
const showAll = () => {
  if (!only) return;
  only = null;
  const url = new URL(location.href);
  url.searchParams.delete("generation");
  history.replaceState(null, "", url);
};

let loads = 0; // loads started; a response to an older one is stale (a search typed meanwhile)

async function load(p = page) {
  page = Math.max(1, p);
  clearTimeout(refresh);
  const mine = ++loads;
  const term = search.value.trim();
  const status = statusSel.value;
  if (!only) syncQuery({ page, search: term, status });
  let data;
  try {
    if (only) {
      // Opened from the Tasks page: that one generation (the search box shows all again).
      const g = await api(`/api/generations/${encodeURIComponent(only)}`);
      data = { items: [g], total: 1, pages: 1 };
    } else {
      data = pageOf(await api("/api/generations", { params: { page, per_page: PER_PAGE, search: term, status } }), ["generations"], PER_PAGE);
    }
  } catch (err) {
    if (mine !== loads) return;
    alertIn(listError, err.message);
    refresh = setTimeout(load, 5000);
    return;
  }
  // A slower, older response (the first page before the search was typed) must not replace
  // the list a newer one showed.
  if (mine !== loads) return;
  alertIn(listError, "");
  if (!data.items.length && page > 1 && data.total > 0) return load(data.pages);
  // Rebuild only what changed, so an open player keeps playing while the list refreshes.
  const key = JSON.stringify(data.items.map((g) => [g.id, g.status, g.text, g.voice_name ?? g.voice?.name, g.duration, g.error_message]));
  if (key !== lastKey) {
    lastKey = key;
    const keep = new Set(data.items.map((g) => String(g.id)));
    for (const [id, pl] of players) if (!keep.has(id)) (pl.destroy(), players.delete(id));
    list.replaceChildren(...data.items.map(row));
  }
  if (!data.items.length) {
    empty.textContent = term || status ? "Nothing matches these filters." : "Nothing generated yet.";
    if (!term && !status) empty.innerHTML = 'Nothing generated yet. <a href="/generate">Generate something</a>.';
  }
  show(empty, !data.items.length);
  renderPager(data.page, data.pages, data.total);
  if (data.items.some((g) => ["queued", "running"].includes(normStatus(g.status)))) refresh = setTimeout(load, 1500);
}

function row(g) {
  const el = tpl.content.firstElementChild.cloneNode(true);
  const id = String(g.id);
  el.dataset.id = id;
  const status = normStatus(g.status);
  el.dataset.status = status;
  const badge = role(el, "status");
  badge.dataset.status = status;
  badge.textContent = statusLabel[status];
  const voiceName = g.voice_name ?? g.voice?.name ?? (g.voice_id ? "deleted voice" : "");
  role(el, "voice").textContent = voiceName;
  role(el, "text").textContent = g.text;
  role(el, "text").title = g.text;
  // The text shows in full only when short; a match deep in a long one gets its words shown.
  showMatch(role(el, "match"), g.match, g.text.length > 120 ? ["voice"] : ["text", "voice"]);
  const err = g.error_message ?? g.error;
  if (status === "failed" && err) {
    role(el, "error").textContent = err;
    show(role(el, "error"));
  }
  if (g.partial) badge.textContent += " · partial audio";
  const genTime = g.generation_time ?? g.generation_seconds ?? g.elapsed_seconds;
  role(el, "meta").textContent = [
    g.language,
    g.duration ?? g.duration_seconds ? `${secs(g.duration ?? g.duration_seconds)} audio` : "",
    genTime ? `made in ${secs(genTime)}` : "",
    g.seed !== undefined && g.seed !== null ? `seed ${g.seed}` : "",
    settingsText(g.options),
    when(g.created_at),
  ]
    .filter(Boolean)
    .join(" · ");

  const audioUrl = g.audio_url ?? generationAudioUrl(g.id);
  const playBtn = role(el, "play");
  const dl = role(el, "download");
  // A failed or cancelled job keeps the audio it made (g.partial): play and download it too.
  const done = status === "completed" || Boolean(g.partial && g.audio_url);
  playBtn.hidden = !done;
  dl.hidden = !done;
  dl.textContent = g.partial ? "Download partial" : "Download";
  const format = role(el, "format");
  format.hidden = !done;
  const setFormat = () => {
    dl.href = audioUrl + (audioUrl.includes("?") ? "&" : "?") + `download=1&format=${format.value}`;
    dl.download = `utter-${id}.${format.value}`;
  };
  format.addEventListener("change", setFormat);
  setFormat();

  const box = role(el, "player");
  if (players.has(id)) {
    box.replaceChildren(players.get(id).root);
    players.get(id).container = box;
    show(box);
    playBtn.textContent = "Hide player";
  }
  playBtn.addEventListener("click", () => {
    const existing = players.get(id);
    if (existing) {
      existing.destroy();
      players.delete(id);
      show(box, false);
      playBtn.textContent = "▶ Play";
      return;
    }
    const pl = new WaveformPlayer(box, { src: audioUrl, compact: true });
    players.set(id, pl);
    show(box);
    playBtn.textContent = "Hide player";
    pl.ready.then(() => pl.play()).catch(() => {});
  });

  const resume = role(el, "resume");
  resume.hidden = !(g.resumable && g.task_id);
  resume.title = "Continue from the audio made so far";
  resume.addEventListener("click", async () => {
    resume.disabled = true;
    try {
      await api(`/api/tasks/${encodeURIComponent(g.task_id)}/resume`, { method: "POST" });
      toast("Resumed: it continues from where it stopped.", "success");
      lastKey = "";
      load();
    } catch (e) {
      resume.disabled = false;
      toast(e.message, "error");
    }
  });

  role(el, "regenerate").addEventListener("click", () => {
    const settings = { text: g.text, voice_id: g.voice_id ?? g.voice?.id, language: g.language };
    sessionStorage.setItem("utter.prefill", JSON.stringify({ ...settings, seed: g.seed, options: g.options ?? {} }));
    location.href = "/generate";
  });
  role(el, "regenerate").disabled = !(g.voice_id ?? g.voice?.id ?? g.options?.speaker);
  if (role(el, "regenerate").disabled) role(el, "regenerate").title = "Its voice was deleted.";

  // Compare: pick takes (say, one text with several seeds) to hear them side by side.
  const pick = role(el, "pick");
  role(el, "pick-label").hidden = !done;
  pick.checked = picked.has(id);
  pick.addEventListener("change", () => {
    if (pick.checked && picked.size >= MAX_COMPARE) {
      pick.checked = false;
      toast(`Compare up to ${MAX_COMPARE} takes at a time.`, "info");
      return;
    }
    if (pick.checked) picked.set(id, { ...g, audioUrl });
    else picked.delete(id);
    syncCompare();
  });

  role(el, "delete").addEventListener("click", async () => {
    const ok = await confirmDialog({
      title: "Delete this generation?",
      message: `“${g.text.slice(0, 80)}${g.text.length > 80 ? "…" : ""}” and its audio are removed.`,
    });
    if (!ok) return;
    try {
      await api(`/api/generations/${encodeURIComponent(g.id)}`, { method: "DELETE" });
      players.get(id)?.destroy();
      players.delete(id);
      toast("Deleted.", "success");
      lastKey = "";
      load();
    } catch (e) {
      toast(e.message, "error");
    }
  });
  return el;
}

// ---- takes side by side ---------------------------------------------------------------------

const MAX_COMPARE = 4;
const picked = new Map(); // generation id -> the generation (kept across pages and searches)
const compareBar = $("#compare-bar");
const comparePanel = $("#compare");
let comparePlayers = [];

function syncCompare() {
  role(compareBar, "count").textContent = `${picked.size} take${picked.size === 1 ? "" : "s"} chosen`;
  show(compareBar, picked.size > 0);
  role(compareBar, "open").disabled = picked.size < 2;
}

function closeCompare() {
  for (const p of comparePlayers) p.destroy();
  comparePlayers = [];
  role(comparePanel, "grid").replaceChildren();
  show(comparePanel, false);
}

function openCompare() {
  closeCompare();
  const grid = role(comparePanel, "grid");
  for (const g of picked.values()) {
    const cell = document.createElement("article");
    cell.className = "compare-cell";
    const title = document.createElement("h3");
    title.className = "compare-title";
    title.textContent = `${g.voice_name ?? ""} · seed ${g.seed ?? "?"}`;
    const meta = document.createElement("p");
    meta.className = "muted small";
    meta.textContent = [g.language, settingsText(g.options), when(g.created_at)].filter(Boolean).join(" · ");
    const text = document.createElement("p");
    text.className = "compare-text small";
    text.textContent = g.text.length > 160 ? `${g.text.slice(0, 160)}…` : g.text;
    const box = document.createElement("div");
    cell.append(title, meta, text, box);
    grid.append(cell);
    comparePlayers.push(new WaveformPlayer(box, { src: g.audioUrl }));
  }
  show(comparePanel);
  comparePanel.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

role(compareBar, "open").addEventListener("click", openCompare);
role(compareBar, "clear").addEventListener("click", () => {
  picked.clear();
  for (const box of document.querySelectorAll("[data-role=pick]")) box.checked = false;
  syncCompare();
  closeCompare();
});
role(comparePanel, "close").addEventListener("click", closeCompare);

search.addEventListener("input", debounce(() => (showAll(), load(1)), 250));
statusSel.addEventListener("change", () => (showAll(), load(1)));
load();
