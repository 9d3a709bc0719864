// Small DOM helpers shared by the pages: formatting, alerts, toasts, a confirm dialog, busy buttons.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
export const role = (root, name) => root.querySelector(`[data-role="${name}"]`);

/** The page's config from the server (limits the server also enforces). */
export const config = (() => {
  try {
    return JSON.parse(document.getElementById("studio-config")?.textContent || "{}");
  } catch {
    return {};
  }
})();
export const limits = config.limits || {};

/** 75.4 -> "1:15"; 3700 -> "1:01:40". */
export function clock(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** Seconds with one decimal: "2.5 s". */
export const secs = (v) => (v === null || v === undefined || !Number.isFinite(Number(v)) ? "—" : `${Number(v).toFixed(1)} s`);

export const bytes = (n) =>
  n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(0)} KB` : `${(n / 1024 / 1024).toFixed(1)} MB`;

/** Epoch seconds, epoch milliseconds or an ISO string -> milliseconds (or null). */
export function toMillis(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return t < 1e12 ? t * 1000 : t;
  let s = String(t);
  if (/^\d+(\.\d+)?$/.test(s)) return toMillis(Number(s));
  // Naive ISO timestamps from the server are UTC.
  if (/T\d\d:\d\d(:\d\d(\.\d+)?)?$/.test(s)) s += "Z";
  const ms = Date.parse(s);
  return Number.isNaN(ms) ? null : ms;
}

export function when(t) {
  const ms = toMillis(t);
  if (ms === null) return "";
  const ago = (Date.now() - ms) / 1000;
  if (ago < 45) return "just now";
  if (ago < 3600) return `${Math.round(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.round(ago / 3600)} h ago`;
  return new Date(ms).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function show(el, on = true) {
  if (el) el.hidden = !on;
}

/** Put a message in an alert element (or hide it when msg is empty). */
export function alertIn(el, msg) {
  if (!el) return;
  el.textContent = msg || "";
  el.hidden = !msg;
}

/** Mark a submit button busy (spinner, disabled) and give back a function that restores it. */
export function busy(btn, label) {
  const text = role(btn, "label");
  const spin = btn.querySelector(".spinner");
  const old = text?.textContent;
  btn.disabled = true;
  btn.setAttribute("aria-busy", "true");
  if (spin) spin.hidden = false;
  if (text && label) text.textContent = label;
  return () => {
    btn.disabled = false;
    btn.removeAttribute("aria-busy");
    if (spin) spin.hidden = true;
    if (text && old !== undefined) text.textContent = old;
  };
}

export function toast(message, kind = "info", ms = 4000) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = document.createElement("div");
  el.className = `toast toast-${kind}`;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  el.textContent = message;
  box.append(el);
  setTimeout(() => {
    el.classList.add("leaving");
    setTimeout(() => el.remove(), 300);
  }, ms);
}

/** A confirm dialog built on <dialog>; resolves true when confirmed. */
export function confirmDialog({ title = "Are you sure?", message = "", ok = "Delete" } = {}) {
  const dlg = document.getElementById("confirm-dialog");
  if (!dlg?.showModal) return Promise.resolve(window.confirm(message || title));
  role(dlg, "title").textContent = title;
  role(dlg, "message").textContent = message;
  role(dlg, "ok").textContent = ok;
  dlg.returnValue = "";
  dlg.showModal();
  return new Promise((resolve) => dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true }));
}

export const debounce = (fn, ms = 250) => {
  let t;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
};

/** Pagination controls: wire once, then call render(page, pages). */
export function pager(nav, onPage) {
  const prev = role(nav, "prev");
  const next = role(nav, "next");
  const info = role(nav, "info");
  let current = 1;
  prev.addEventListener("click", () => onPage(current - 1));
  next.addEventListener("click", () => onPage(current + 1));
  return (page, pages, total) => {
    current = page;
    nav.hidden = pages <= 1;
    prev.disabled = page <= 1;
    next.disabled = page >= pages;
    info.textContent = `Page ${page} of ${pages}` + (total !== undefined ? ` · ${total} total` : "");
  };
}

/** Keep ?page=&search=&status= in the address bar so a reload keeps the view. */
export function syncQuery(params) {
  const url = new URL(location.href);
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "" || (k === "page" && Number(v) === 1)) url.searchParams.delete(k);
    else url.searchParams.set(k, v);
  }
  history.replaceState(null, "", url);
}

export const statusLabel = {
  queued: "Queued",
  running: "Running",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

const FIELD_LABEL = { name: "the name", transcript: "the transcript", text: "the text", voice: "the voice name" };

/** Fill a row's "why it matched" note from the API's `match` ({field, snippet, matched}),
 *  with the matched words marked; hidden when there is no search or the match is in plain view. */
export function showMatch(el, match, visibleFields = []) {
  if (!el) return;
  if (!match || visibleFields.includes(match.field)) {
    el.hidden = true;
    return;
  }
  const { snippet, matched } = match;
  const at = matched ? snippet.indexOf(matched) : -1;
  const mark = document.createElement("mark");
  mark.textContent = at >= 0 ? matched : "";
  el.replaceChildren(
    `Matched in ${FIELD_LABEL[match.field] ?? match.field}: “`,
    at >= 0 ? snippet.slice(0, at) : snippet,
    mark,
    at >= 0 ? snippet.slice(at + matched.length) : "",
    "”",
  );
  el.hidden = false;
}
