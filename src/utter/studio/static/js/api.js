// The studio's JSON API, wrapped: one fetch helper that turns every failure into a readable
// message, and small normalisers so the pages do not depend on incidental response details.

export class ApiError extends Error {
  constructor(message, status = 0, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** A readable message from an error body: FastAPI's {detail}, a list of validation errors, or text. */
export function errorMessage(body, status) {
  if (body && typeof body === "object") {
    const d = body.detail ?? body.error ?? body.message;
    if (typeof d === "string") return d;
    if (Array.isArray(d) && d.length) {
      return d
        .map((e) => {
          if (typeof e === "string") return e;
          const loc = Array.isArray(e.loc) ? e.loc.filter((p) => p !== "body" && p !== "query").join(".") : "";
          return loc ? `${loc}: ${e.msg}` : e.msg;
        })
        .join("; ");
    }
    if (d && typeof d === "object") return d.message || d.reason || JSON.stringify(d);
  }
  if (typeof body === "string" && body.trim() && body.length < 300 && !body.includes("<")) return body.trim();
  if (status === 413) return "The upload is too large.";
  if (status === 503) return "The model is not available right now.";
  if (status >= 500) return `The server hit an error (${status}). Try again.`;
  return `Request failed (${status}).`;
}

/** fetch() for the JSON API. `json` sends a JSON body, `form` a FormData body. */
export async function api(path, { method = "GET", json, form, params, signal } = {}) {
  let url = path;
  if (params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    const s = q.toString();
    if (s) url += (url.includes("?") ? "&" : "?") + s;
  }
  const opts = { method, headers: { Accept: "application/json" }, signal };
  if (json !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(json);
  } else if (form) {
    opts.body = form;
  }
  let res;
  try {
    res = await fetch(url, opts);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the studio server. Is it still running?", 0);
  }
  const type = res.headers.get("content-type") || "";
  let body = null;
  if (res.status !== 204) body = type.includes("json") ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) throw new ApiError(errorMessage(body, res.status), res.status, body);
  return body;
}

/** A page of a list response: {items, total, page, pages, perPage}, whatever the list key is. */
export function pageOf(body, keys = ["items"], perPage = 20) {
  let items = [];
  if (Array.isArray(body)) items = body;
  else if (body) {
    for (const k of [...keys, "items", "results", "data"]) {
      if (Array.isArray(body[k])) {
        items = body[k];
        break;
      }
    }
  }
  const per = Number(body?.per_page ?? body?.perPage ?? perPage) || perPage;
  const total = Number(body?.total ?? body?.count ?? items.length);
  const page = Number(body?.page ?? 1) || 1;
  const pages = Number(body?.pages ?? body?.total_pages ?? Math.max(1, Math.ceil(total / per)));
  return { items, total, page, pages: Math.max(1, pages), perPage: per };
}

// ---- tasks ---------------------------------------------------------------------------------

const DONE = new Set(["completed", "complete", "succeeded", "success", "done", "finished"]);
const FAILED = new Set(["failed", "error", "errored"]);
const CANCELLED = new Set(["cancelled", "canceled", "cancelling", "canceling"]);
const QUEUED = new Set(["queued", "pending", "waiting", "created", "submitted"]);
// The server says "processing"; the pages say "running".
const RUNNING = new Set(["processing", "running", "started", "in_progress"]);

/** One of: queued, running, completed, failed, cancelled. */
export function normStatus(status) {
  const s = String(status || "").toLowerCase();
  if (DONE.has(s)) return "completed";
  if (FAILED.has(s)) return "failed";
  if (CANCELLED.has(s)) return "cancelled";
  if (QUEUED.has(s)) return "queued";
  if (RUNNING.has(s)) return "running";
  return s ? "running" : "queued";
}

export const isTerminal = (status) => ["completed", "failed", "cancelled"].includes(normStatus(status));

/** Progress in 0..1 (servers may send 0..1 or a percentage). */
export function normProgress(task) {
  let p = Number(task?.progress ?? task?.percent ?? 0);
  if (!Number.isFinite(p)) p = 0;
  if (p > 1) p /= 100;
  if (normStatus(task?.status) === "completed") p = 1;
  return Math.min(1, Math.max(0, p));
}

/** A task's fields under stable names. */
export function normTask(t) {
  const result = t.result && typeof t.result === "object" ? t.result : {};
  const status = normStatus(t.status);
  const generationId = t.generation_id ?? result.generation_id ?? result.id ?? null;
  return {
    raw: t,
    id: t.id ?? t.task_id,
    status,
    progress: normProgress(t),
    message: t.message ?? t.stage ?? t.detail ?? "",
    error: t.error ?? t.error_message ?? result.error ?? null,
    generationId,
    audioUrl: t.audio_url ?? result.audio_url ?? (generationId != null ? generationAudioUrl(generationId) : null),
    elapsed: numOrNull(t.elapsed_seconds ?? t.elapsed),
    eta: numOrNull(t.eta_seconds ?? t.eta ?? t.estimated_remaining_seconds),
    createdAt: t.created_at ?? t.submitted_at ?? null,
    startedAt: t.started_at ?? null,
    finishedAt: t.finished_at ?? t.completed_at ?? null,
    title: t.title ?? t.label ?? t.text ?? result.text ?? "",
    voiceName: t.voice_name ?? t.voice?.name ?? result.voice_name ?? "",
    kind: t.kind ?? t.type ?? "generate",
  };
}

const numOrNull = (v) => (v === null || v === undefined || v === "" || !Number.isFinite(Number(v)) ? null : Number(v));

export const generationAudioUrl = (id) => `/api/generations/${encodeURIComponent(id)}/audio`;
export const voicePreviewUrl = (id) => `/api/voices/${encodeURIComponent(id)}/preview`;

// ---- languages -----------------------------------------------------------------------------

let languagesPromise = null;

/** The model's languages, fetched once per page: {languages: [...], default}. */
export function getLanguages() {
  languagesPromise ??= api("/api/languages")
    .then((body) => {
      const list = Array.isArray(body) ? body : body?.languages ?? [];
      const names = list.map((l) => (typeof l === "string" ? l : l.name ?? l.code)).filter(Boolean);
      return { languages: names.length ? names : ["Auto"], default: body?.default ?? names[0] ?? "Auto" };
    })
    .catch(() => ({ languages: ["Auto", "English", "Chinese"], default: "Auto" }));
  return languagesPromise;
}

/** Fill every <select data-languages> on the page. */
export async function fillLanguageSelects(selected) {
  const { languages, default: dflt } = await getLanguages();
  for (const sel of document.querySelectorAll("select[data-languages]")) {
    const want = selected ?? sel.value ?? dflt;
    sel.replaceChildren(...languages.map((l) => new Option(l, l)));
    sel.value = languages.includes(want) ? want : dflt;
  }
}
