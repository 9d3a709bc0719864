// Tasks page: running and recent jobs with live progress and cancel. The list comes from the task
// store (jobs started in this browser, plus the server's own list when it offers one).

import { generationAudioUrl, isTerminal } from "./api.js";
import { cancelTask, elapsedOf, etaOf, onTasks, unreachableSinceMs } from "./tasks-store.js";
import { $, clock, role, show, statusLabel, toast, when } from "./ui.js";

const tpl = $("#task-row");
const running = $("#running-list");
const recent = $("#recent-list");
const rows = new Map(); // task id -> element, reused so buttons keep focus across updates

function rowFor(t) {
  const key = String(t.id);
  let el = rows.get(key);
  if (!el) {
    el = tpl.content.firstElementChild.cloneNode(true);
    el.dataset.id = key;
    role(el, "cancel").addEventListener("click", async () => {
      const btn = role(el, "cancel");
      btn.disabled = true;
      try {
        await cancelTask(key);
        toast("Job cancelled.", "info");
      } catch (err) {
        toast(err.message, "error");
      } finally {
        btn.disabled = false;
      }
    });
    role(el, "listen").addEventListener("click", () => {
      // A running job: its audio as it is made (one stream that follows it); a finished one: the file.
      const t = el._task;
      const audio = role(el, "audio");
      audio.src =
        t.status === "running" ? `/api/tasks/${encodeURIComponent(key)}/live.wav` : generationAudioUrl(t.generationId);
      audio.dataset.kind = t.status === "running" ? "live" : "file";
      show(audio);
      show(role(el, "listen"), false);
      audio.play().catch(() => {});
    });
    rows.set(key, el);
  }
  return el;
}

function fill(el, t) {
  el._task = t;
  el.dataset.status = t.status;
  const audio = role(el, "audio");
  const playable = t.status === "running" || (t.status === "completed" && t.generationId != null);
  show(role(el, "listen"), playable && audio.hidden);
  role(el, "listen").textContent = t.status === "running" ? "▶ Listen while it is made" : "▶ Play";
  const badge = role(el, "status");
  badge.dataset.status = t.status;
  badge.textContent = statusLabel[t.status] ?? t.status;
  const title = t.title ? `“${t.title.length > 90 ? t.title.slice(0, 90) + "…" : t.title}”` : `Job ${t.id}`;
  role(el, "title").textContent = t.voiceName ? `${title} — ${t.voiceName}` : title;
  const pct = Math.round((t.progress || 0) * 100);
  const bar = role(el, "progress");
  role(bar, "bar").style.width = `${pct}%`;
  bar.setAttribute("aria-valuenow", String(pct));
  bar.dataset.status = t.status;
  bar.classList.toggle("indeterminate", t.status === "queued");
  show(bar, !isTerminal(t.status) || t.status === "completed");
  const err = role(el, "error");
  err.textContent = t.error || "";
  show(err, t.status === "failed" && !!t.error);
  const eta = etaOf(t);
  const parts = isTerminal(t.status)
    ? [`took ${clock(elapsedOf(t))}`, when(t.finishedAt)]
    : unreachableSinceMs() !== null
      ? [`${pct}%`, "the server is not answering; retrying"]
      : [`${pct}%`, `elapsed ${clock(elapsedOf(t))}`, eta !== null ? `~${clock(eta)} left` : "", t.message];
  role(el, "meta").textContent = parts.filter(Boolean).join(" · ");
  show(role(el, "cancel"), !isTerminal(t.status));
  const open = role(el, "open");
  show(open, t.status === "completed");
  if (t.generationId != null) open.href = `/history?generation=${encodeURIComponent(t.generationId)}`;
}

function render(tasks) {
  const active = tasks.filter((t) => !isTerminal(t.status));
  const done = tasks.filter((t) => isTerminal(t.status)).slice(0, 20);
  for (const t of tasks) fill(rowFor(t), t);
  running.replaceChildren(...active.map((t) => rows.get(String(t.id))));
  recent.replaceChildren(...done.map((t) => rows.get(String(t.id))));
  $("#running-count").textContent = String(active.length);
  show($("#running-empty"), active.length === 0);
  show($("#recent-empty"), done.length === 0);
}

let latest = [];
onTasks((tasks) => {
  latest = tasks;
  render(tasks);
});
// Keep the elapsed times moving between polls.
setInterval(() => latest.some((t) => !isTerminal(t.status)) && render(latest), 500);
