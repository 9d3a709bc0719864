// Runs on every page: the model-state banner (from GET /api/health) and the header's running-job
// indicator (from the task store), plus a toast when a job finishes while you are elsewhere.

import { api } from "./api.js";
import { activeTasks, onTasks, poll } from "./tasks-store.js";
import { bytes, config, role, toast } from "./ui.js";

// ---- model state ---------------------------------------------------------------------------

const STATES = {
  ready: ["ready", "ok", "loaded", "healthy", "up"],
  downloading: ["downloading", "download"],
  loading: ["loading", "starting", "initializing", "initialising", "warming", "pending", "idle", "not_loaded"],
  failed: ["failed", "error", "unavailable", "offline", "missing"],
};

/** /api/health's answer under stable names: {state, progress, detail, reason, hint, model}. */
export function normHealth(h) {
  const m = h && typeof h.model === "object" && h.model !== null ? h.model : h || {};
  const raw = String(m.state ?? m.status ?? h?.model_state ?? h?.state ?? h?.status ?? "").toLowerCase();
  let state = "loading";
  for (const [name, words] of Object.entries(STATES)) if (words.includes(raw)) state = name;
  let progress = m.progress ?? m.download_progress ?? null;
  const done = Number(m.downloaded_bytes ?? m.bytes_done ?? m.downloaded ?? NaN);
  const total = Number(m.total_bytes ?? m.bytes_total ?? m.total ?? NaN);
  if ((progress === null || progress === undefined) && total > 0 && Number.isFinite(done)) progress = done / total;
  if (progress !== null && progress !== undefined) {
    progress = Number(progress);
    if (progress > 1) progress /= 100;
  }
  return {
    state,
    progress: Number.isFinite(progress) ? Math.min(1, Math.max(0, progress)) : null,
    done: Number.isFinite(done) ? done : null,
    total: Number.isFinite(total) ? total : null,
    reason: m.reason ?? m.error ?? m.message ?? h?.error ?? "",
    hint: m.hint ?? m.help ?? h?.hint ?? "",
    model: m.name ?? m.id ?? m.model ?? h?.model_name ?? (typeof h?.model === "string" ? h.model : ""),
    device: m.device ?? h?.device ?? "",
    // The other models the studio runs (a CustomVoice, a VoiceDesign): their names and states.
    extras: (Array.isArray(h?.models) ? h.models.slice(1) : []).map((x) => ({
      model: x.model,
      state: x.state,
      variant: x.variant,
      memory: x.memory_mib,
    })),
    // Free space for voices and generations: {free_mib, low}, or null (an older server).
    storage: h?.storage && typeof h.storage === "object" ? h.storage : null,
  };
}

function renderDisk(storage) {
  const banner = document.getElementById("disk-banner");
  if (!banner) return;
  banner.hidden = !storage?.low;
  if (storage?.low) {
    const free = Number(storage.free_mib);
    role(banner, "detail").textContent =
      `${Number.isFinite(free) ? `${Math.round(free)} MiB left. ` : ""}` +
      "New voices and generations cannot be stored once it runs out; free some space on the server.";
  }
}

const healthListeners = new Set();
let lastHealth = null;

/** Subscribe to model-state changes (called at once if a state is known). */
export function onHealth(fn) {
  healthListeners.add(fn);
  if (lastHealth) fn(lastHealth);
  return () => healthListeners.delete(fn);
}

function renderHealth(h) {
  const banner = document.getElementById("model-banner");
  const chip = document.getElementById("model-chip");
  const bar = role(banner, "progress");
  const chipText = {
    ready: "Model ready",
    downloading: "Downloading model",
    loading: "Loading model",
    failed: "Model unavailable",
    unreachable: "Server offline",
  }[h.state];
  chip.dataset.state = h.state;
  const waiting = (h.extras ?? []).filter((x) => x.state !== "ready").length;
  role(chip, "text").textContent =
    h.state === "ready" && waiting ? `${chipText} · ${waiting} more loading` : chipText;
  const lines = [[h.model, h.device].filter(Boolean).join(" · ") || chipText];
  for (const x of h.extras ?? []) {
    lines.push(`${x.model} (${x.variant ?? "model"}): ${x.state}${x.memory ? `, ${Math.round(x.memory)} MiB` : ""}`);
  }
  chip.title = lines.join("\n");

  banner.dataset.state = h.state;
  banner.hidden = h.state === "ready";
  let title = "";
  let detail = "";
  let hint = h.hint || "";
  if (h.state === "downloading") {
    title = "Downloading the model…";
    const pct = h.progress !== null ? `${Math.round(h.progress * 100)}%` : "";
    const size = h.total ? `${bytes(h.done || 0)} of ${bytes(h.total)}` : "";
    detail = [pct, size].filter(Boolean).join(" · ") + ". Pages work now; generation starts when it is ready.";
  } else if (h.state === "loading") {
    title = "Loading the model…";
    detail = "Pages work now; generation requests wait until it is ready.";
  } else if (h.state === "failed") {
    title = "The model is unavailable.";
    detail = h.reason || "It could not be loaded.";
    hint ||= "Fix what the message says (network, --model folder), then try again; no restart needed.";
  } else if (h.state === "unreachable") {
    title = "Cannot reach the studio server.";
    detail = "Retrying…";
    hint = "";
  }
  role(banner, "title").textContent = title;
  role(banner, "detail").textContent = detail;
  role(banner, "hint").textContent = hint;
  role(banner, "hint").hidden = !hint;
  role(banner, "retry").hidden = h.state !== "failed";
  const showBar = h.state === "downloading" || h.state === "loading";
  bar.hidden = !showBar;
  bar.classList.toggle("indeterminate", showBar && h.progress === null);
  role(bar, "bar").style.width = h.progress !== null ? `${(h.progress * 100).toFixed(1)}%` : "";
}

let healthTimer = null;
let unreachableFor = 0; // health polls in a row that found no server

async function pollHealth() {
  clearTimeout(healthTimer);
  let h;
  try {
    h = normHealth(await api("/api/health"));
  } catch (err) {
    // A 503 with a body still describes the model (e.g. failed); anything else: server unreachable.
    h = err.body && typeof err.body === "object" ? normHealth(err.body) : { state: "unreachable", progress: null };
    if (err.body && typeof err.body === "object" && h.state === "loading" && !err.body.model && !err.body.state) {
      h = { ...h, state: "failed", reason: err.message };
    }
  }
  lastHealth = h;
  renderHealth(h);
  renderDisk(h.storage);
  for (const fn of healthListeners) fn(h);
  // While the server is unreachable, back off (1.5 s doubling to 15 s) instead of polling every second.
  unreachableFor = h.state === "unreachable" ? unreachableFor + 1 : 0;
  const wait = h.state === "ready" || h.state === "failed" ? 15000 : Math.min(15000, 1500 * 2 ** unreachableFor);
  healthTimer = setTimeout(pollHealth, wait);
}

document.getElementById("model-banner")?.querySelector("[data-role=retry]")?.addEventListener("click", async (e) => {
  e.target.disabled = true;
  try {
    await api("/api/model/retry", { method: "POST" });
  } catch {
    /* the banner shows what the server says next */
  }
  e.target.disabled = false;
  pollHealth();
});

// ---- running-job indicator -----------------------------------------------------------------

const seen = new Map(); // task id -> last status seen in this page

function renderIndicator(tasks) {
  const el = document.getElementById("task-indicator");
  if (!el) return;
  const active = activeTasks();
  el.hidden = active.length === 0;
  if (active.length) {
    const first = active[0];
    const pct = Math.round((first.progress || 0) * 100);
    const what = first.status === "queued" ? "Queued" : `Generating ${pct}%`;
    role(el, "label").textContent = active.length > 1 ? `${active.length} jobs · ${what}` : what;
    role(el, "bar").style.width = `${first.status === "queued" ? 0 : pct}%`;
    el.title = first.title ? `“${first.title.slice(0, 80)}”` : "Running jobs";
  }
  for (const t of tasks) {
    const before = seen.get(String(t.id));
    if (before && before !== t.status && config.page !== "generate") {
      if (t.status === "completed") toast("Your speech is ready — see History.", "success");
      else if (t.status === "failed") toast(`A job failed: ${t.error || "unknown error"}`, "error", 7000);
    }
    seen.set(String(t.id), t.status);
  }
}

onTasks(renderIndicator);
poll();
pollHealth();
