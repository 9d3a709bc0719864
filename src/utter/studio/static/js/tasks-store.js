// The jobs this browser started, kept in localStorage and polled while they run, so a job's
// progress stays visible on every page (the header indicator) and survives page changes.
// When the server lists its jobs (GET /api/tasks), those are merged in too.

import { api, isTerminal, normTask } from "./api.js";
import { toMillis } from "./ui.js";

const KEY = "utter.tasks.v1";
const KEEP = 30; // most recent jobs remembered
const FAST_MS = 700;
const SLOW_MS = 5000;
const MAX_BACKOFF_MS = 30000; // while the server cannot be reached: 0.7, 1.4, 2.8 ... 30 s

let failures = 0; // polling rounds in a row that could not reach the server
let unreachableSince = null; // when the server stopped answering (null: it answers)

let tasks = load();
let timer = null;
let serverList = undefined; // undefined: unknown, false: no list endpoint, true: has one
const listeners = new Set();

function load() {
  try {
    const v = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(v) ? v : [];
  } catch {
    return [];
  }
}

function save() {
  try {
    localStorage.setItem(KEY, JSON.stringify(tasks.slice(0, KEEP)));
  } catch {
    /* storage full or disabled: the in-memory list still works */
  }
}

function emit() {
  for (const fn of listeners) fn(tasks);
  window.dispatchEvent(new CustomEvent("utter:tasks", { detail: tasks }));
}

/** Subscribe to changes; the callback runs at once with the current list. Returns unsubscribe. */
export function onTasks(fn) {
  listeners.add(fn);
  fn(tasks);
  return () => listeners.delete(fn);
}

export const allTasks = () => tasks;
export const getTask = (id) => tasks.find((t) => String(t.id) === String(id));
export const activeTasks = () => tasks.filter((t) => !isTerminal(t.status));

/** Remember a job just submitted (from POST /api/generate's answer plus what the page knows). */
export function trackTask(submitted, extra = {}) {
  const t = normTask(submitted);
  const entry = {
    id: t.id,
    generationId: t.generationId,
    status: t.status,
    progress: t.progress,
    title: extra.title ?? t.title,
    voiceName: extra.voiceName ?? t.voiceName,
    submittedAt: Date.now(),
    error: null,
    message: "",
    audioUrl: t.audioUrl,
    eta: null,
  };
  tasks = [entry, ...tasks.filter((x) => String(x.id) !== String(entry.id))];
  save();
  emit();
  poll();
  return entry;
}

function merge(id, t, extra = {}) {
  const i = tasks.findIndex((x) => String(x.id) === String(id));
  const prev = i >= 0 ? tasks[i] : { id, submittedAt: toMillis(t.createdAt) ?? Date.now() };
  const next = {
    ...prev,
    status: t.status,
    progress: Math.max(t.status === "running" ? prev.progress || 0 : 0, t.progress),
    message: t.message || "",
    error: t.error,
    generationId: t.generationId ?? prev.generationId,
    audioUrl: t.audioUrl ?? prev.audioUrl,
    eta: t.eta,
    serverElapsed: t.elapsed,
    startedAt: toMillis(t.startedAt) ?? prev.startedAt ?? null,
    title: prev.title || t.title,
    voiceName: prev.voiceName || t.voiceName,
    ...extra,
  };
  if (isTerminal(next.status) && !next.finishedAt) next.finishedAt = toMillis(t.finishedAt) ?? Date.now();
  if (!next.startedAt && next.status === "running") next.startedAt = Date.now();
  if (i >= 0) tasks[i] = next;
  else tasks.push(next);
}

async function refreshOne(entry) {
  try {
    const body = await api(`/api/tasks/${encodeURIComponent(entry.id)}`);
    merge(entry.id, normTask(body));
  } catch (err) {
    if (err.status === 0) throw err; // the server is not answering: the round backs off
    if (err.status === 404) {
      merge(entry.id, { ...entry, status: "failed", progress: entry.progress || 0, error: "The server no longer knows this job (it may have restarted)." });
    }
    // Network errors: keep the last state and try again on the next tick.
  }
}

async function refreshServerList() {
  if (serverList === false) return;
  try {
    const body = await api("/api/tasks", { params: { limit: KEEP } });
    const list = Array.isArray(body) ? body : body?.tasks ?? body?.items ?? null;
    if (!Array.isArray(list)) {
      serverList = false;
      return;
    }
    serverList = true;
    for (const raw of list) {
      const t = normTask(raw);
      if (t.id === undefined || t.id === null) continue;
      merge(t.id, t);
    }
    await fillTitles();
  } catch (err) {
    if (err.status === 0) throw err; // the server is not answering: the round backs off
    if ([404, 405, 422].includes(err.status)) serverList = false;
  }
}

let titlesAt = 0;

/** Jobs known only from the server's list carry no text: borrow it from their generations. */
async function fillTitles() {
  const missing = tasks.filter((t) => !t.title && t.generationId);
  if (!missing.length || Date.now() - titlesAt < 10000) return;
  titlesAt = Date.now();
  try {
    const body = await api("/api/generations", { params: { per_page: 100 } });
    const byId = new Map((body?.generations ?? body?.items ?? []).map((g) => [String(g.id), g]));
    for (const t of missing) {
      const g = byId.get(String(t.generationId));
      if (g) Object.assign(t, { title: g.text ?? "", voiceName: g.voice_name ?? "" });
    }
  } catch {
    /* titles are a nicety */
  }
}

let ticking = false;
let lastList = 0;

/** One polling round: refresh running jobs (and the server's list now and then), then reschedule. */
export async function poll() {
  clearTimeout(timer);
  if (ticking) return;
  ticking = true;
  try {
    if (serverList !== false && Date.now() - lastList > (activeTasks().length ? 2000 : SLOW_MS - 500)) {
      lastList = Date.now();
      await refreshServerList();
    }
    await Promise.all(activeTasks().map(refreshOne));
    failures = 0;
    unreachableSince = null;
  } catch (err) {
    if (err.status !== 0) throw err;
    failures += 1; // down or restarting: keep the last state, ask less and less often
    unreachableSince ??= Date.now();
  } finally {
    tasks.sort((a, b) => (b.submittedAt || 0) - (a.submittedAt || 0));
    save();
    emit();
    ticking = false;
    timer = setTimeout(poll, nextDelay());
  }
}

function nextDelay() {
  if (failures) return Math.min(FAST_MS * 2 ** failures, MAX_BACKOFF_MS);
  return activeTasks().length ? FAST_MS : SLOW_MS;
}

/** Null while the server answers; else since when (ms) it has not (job cards say so). */
export const unreachableSinceMs = () => unreachableSince;

// Back online (the browser says so): ask at once instead of waiting out the backoff.
window.addEventListener("online", () => {
  failures = 0;
  poll();
});

export async function cancelTask(id) {
  const body = await api(`/api/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });
  if (body && typeof body === "object" && (body.status || body.id)) merge(id, normTask({ id, ...body }));
  else merge(id, { ...getTask(id), status: "cancelled" });
  save();
  emit();
  poll();
  return body;
}

export function forgetFinished() {
  tasks = tasks.filter((t) => !isTerminal(t.status));
  save();
  emit();
}

/** Seconds a job has been running, from the server's figure when it gives one. */
export function elapsedOf(t) {
  if (t.serverElapsed !== null && t.serverElapsed !== undefined && !isTerminal(t.status)) return t.serverElapsed;
  const start = t.submittedAt ?? t.startedAt;
  const end = isTerminal(t.status) ? t.finishedAt ?? Date.now() : Date.now();
  return start ? Math.max(0, (end - start) / 1000) : null;
}

/** Seconds left: the server's estimate, or one from the progress so far. */
export function etaOf(t) {
  if (isTerminal(t.status)) return 0;
  if (unreachableSince !== null) return null; // no news from the server: no estimate
  if (t.eta !== null && t.eta !== undefined) return t.eta;
  const p = t.progress || 0;
  if (t.status !== "running" || p < 0.02) return null;
  const ran = t.startedAt ? (Date.now() - t.startedAt) / 1000 : elapsedOf(t);
  return ran === null ? null : (ran * (1 - p)) / p;
}

// Another tab started or finished a job: pick it up.
window.addEventListener("storage", (e) => {
  if (e.key !== KEY) return;
  tasks = load();
  emit();
  poll();
});
