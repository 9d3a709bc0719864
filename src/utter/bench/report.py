"""Turn worker results into the benchmark document: ratios, targets, a table and a plot.

The document (written as JSON) holds ``machine``, ``settings``, one result per measured
configuration under ``utter`` (by weight mode) and ``official`` (by dtype), ``ratios`` (ours /
official's reference dtype, so below 1 is faster for times and above 1 better for throughput) and
``targets`` (issue #3's goals, each with its value, limit and whether it passed).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

FRAME_METRICS = ("prefill_ms", "talker_ms", "code_predictor_ms", "gen_ms", "codec_ms", "total_ms")


def _get(d: dict | None, *path: str):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _ratio(a, b) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _ok(results: dict) -> dict:
    return {k: v for k, v in results.items() if "error" not in v}


# ----------------------------------------------------------------------------- ratios, targets
def ratios(doc: dict) -> dict:
    """Ours / official (its reference dtype) for every measured figure; {} without the official."""
    ref_mode = doc["settings"].get("official_reference")
    ref = _ok(doc.get("official") or {}).get(ref_mode)
    ours = _ok(doc.get("utter") or {})
    if ref is None or not ours:
        return {}
    primary = doc["settings"]["weight_modes"][0]
    out: dict = {"reference": f"official {ref_mode}", "primary": f"utter {primary}"}
    for metric in FRAME_METRICS:
        out[metric] = {
            m: _ratio(_get(r, "frame", metric), _get(ref, "frame", metric)) for m, r in ours.items()
        }
    for name, path in (
        ("say_seconds", ("say", "seconds")),
        ("ttfa_seconds", ("ttfa", "seconds")),
        ("cold_start_seconds", ("load", "cold_start_s")),
        ("peak_rss", ("memory", "peak_rss_mib")),
        ("cuda_peak", ("memory", "cuda_peak_mib")),
    ):
        out[name] = {m: _ratio(_get(r, *path), _get(ref, *path)) for m, r in ours.items()}
    mine = ours.get(primary, {})
    out["audio_s_per_s"] = {
        c: _ratio(_get(mine, "concurrency", c, "audio_s_per_s"), _get(ref, "concurrency", c, "audio_s_per_s"))
        for c in (mine.get("concurrency") or {})
    }
    out["text_seconds"] = {
        t: _ratio(_get(mine, "texts", t, "seconds"), _get(ref, "texts", t, "seconds"))
        for t in (mine.get("texts") or {})
    }
    return out


def _target(tid: str, text: str, value, limit: float, at_most: bool, applies: bool) -> dict:
    passed = None if value is None else (value <= limit if at_most else value >= limit)
    return {"id": tid, "target": text, "value": value, "limit": limit, "passed": passed, "applies": applies}


def targets(doc: dict) -> list[dict]:
    """Issue #3's targets. They are stated for 0.6B sizes (``applies`` is False at other sizes)."""
    s = doc["settings"]
    applies = s.get("size") == "0.6b"
    primary = s["weight_modes"][0]
    ours = _ok(doc.get("utter") or {})
    mine = ours.get(primary, {})
    r = doc.get("ratios") or {}
    gen = r.get("gen_ms") or {}
    # The ratios are to the first official dtype measured (the README's runs: bfloat16, or float32
    # on a CPU without bfloat16 units), so the targets name it.
    reference = f"official {(s.get('official_dtypes') or ['bfloat16'])[0]}"
    if not s["device"].startswith("cuda"):
        sixteen = [gen[m] for m in ("bfloat16", "float16") if gen.get(m) is not None]
        return [
            _target(
                "frame_16bit",
                f"generation time per frame, 16-bit weights, <= 0.5x {reference}",
                min(sixteen) if sixteen else None,
                0.5,
                True,
                applies,
            ),
            _target(
                "frame_8bit",
                f"generation time per frame, 8-bit weights, <= 0.3x {reference}",
                gen.get("int8"),
                0.3,
                True,
                applies,
            ),
            _target(
                "say",
                f"whole `utter say` ({s['frames']} frames) >= 2x faster than official (time ratio <= 0.5)",
                (r.get("say_seconds") or {}).get(primary),
                0.5,
                True,
                applies,
            ),
            _target(
                "throughput_8",
                "aggregate audio s/s with 8 streams >= 5x official serving them one by one",
                (r.get("audio_s_per_s") or {}).get("8"),
                5.0,
                False,
                applies,
            ),
            _target(
                "ttfa",
                "time to first audio, streaming, stored voice <= 1.5 s on CPU",
                _get(mine, "ttfa", "seconds"),
                1.5,
                True,
                applies,
            ),
        ]
    return [
        _target(
            "gpu_one_stream",
            "one stream >= 10x real time",
            _get(mine, "frame", "x_realtime"),
            10.0,
            False,
            applies,
        ),
        _target("gpu_ttfa", "first audio within 50 ms", _get(mine, "ttfa", "seconds"), 0.05, True, applies),
        _target(
            "gpu_32_streams",
            "32 streams >= 150x real time in aggregate",
            _get(mine, "concurrency", "32", "audio_s_per_s"),
            150.0,
            False,
            applies,
        ),
    ]


def finish(doc: dict) -> dict:
    doc["ratios"] = ratios(doc)
    doc["targets"] = targets(doc)
    return doc


# ----------------------------------------------------------------------------- table
def _phases(phases: dict | None) -> str:
    """The engine's loading phases, longest first ("talker 3.1, compile 35.2"; total left out)."""
    if not phases:
        return "-"
    parts = sorted(((k, v) for k, v in phases.items() if k != "total"), key=lambda kv: -kv[1])
    return ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in parts)


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _pair(a, b) -> str:
    """ "a / b" for two figures measured together (one column cell), "-" when there is none."""
    return "-" if a is None else f"{_fmt(a)} / {_fmt(b)}"


def _columns(doc: dict) -> list[tuple[str, dict]]:
    cols = [(f"utter {m}", r) for m, r in (doc.get("utter") or {}).items()]
    cols += [(f"official {m}", r) for m, r in (doc.get("official") or {}).items()]
    return cols


def _all_ok(r: dict) -> bool | None:
    if "error" in r:
        return None
    flags = [v.get("frames_ok") for v in r.values() if isinstance(v, dict) and "frames_ok" in v]
    flags += [v.get("frames_ok") for v in (r.get("concurrency") or {}).values()]
    flags += [v.get("frames_ok") for v in (r.get("texts") or {}).values()]
    flags += [v.get("frames_ok") for v in (r.get("realtime") or {}).values()]
    flags += [v.get("frames_ok") for v in (r.get("arrivals") or {}).values()]
    flags += [v.get("frames_ok") for v in (r.get("longform") or {}).values() if isinstance(v, dict)]
    return all(flags) if flags else None


def table(doc: dict) -> str:
    """A markdown table (readable on screen, pasteable into the README) plus ratios and targets."""
    s, m = doc["settings"], doc["machine"]
    cols = _columns(doc)
    frames = s["frames"]
    rows: list[tuple[str, list[str]]] = [
        ("cold start: process start to loaded (s)", [_fmt(_get(r, "load", "cold_start_s")) for _, r in cols]),
        ("of which loading: phase (s)", [_phases(_get(r, "load", "phases_s")) for _, r in cols]),
        (
            f"`say` {frames * 0.08:.1f} s of audio, whole command (s)",
            [_fmt(_get(r, "say", "seconds")) for _, r in cols],
        ),
        ("prefill (ms)", [_fmt(_get(r, "frame", "prefill_ms"), 1) for _, r in cols]),
        ("talker (ms/frame)", [_fmt(_get(r, "frame", "talker_ms"), 1) for _, r in cols]),
        ("code predictor (ms/frame)", [_fmt(_get(r, "frame", "code_predictor_ms"), 1) for _, r in cols]),
        (
            "generation = talker + predictor (ms/frame)",
            [_fmt(_get(r, "frame", "gen_ms"), 1) for _, r in cols],
        ),
        ("codec decode (ms/frame)", [_fmt(_get(r, "frame", "codec_ms"), 1) for _, r in cols]),
        ("x real time, 1 stream (all in)", [_fmt(_get(r, "frame", "x_realtime")) for _, r in cols]),
        (
            "ops that do work per frame, host side (views excluded), 1 stream",
            [_fmt(_get(r, "frame", "kernels_per_frame"), 0) for _, r in cols],
        ),
        (
            "GPU kernels per frame, 1 stream",
            [_fmt(_get(r, "frame", "gpu_kernels_per_frame"), 0) for _, r in cols],
        ),
        (
            "first audio, stored voice (s; official: whole request)",
            [_fmt(_get(r, "ttfa", "seconds"), 3) for _, r in cols],
        ),
    ]
    if any(r.get("serving_kernels") for _, r in cols):
        rows.append(("serving engine's products", [r.get("serving_kernels") or "-" for _, r in cols]))
    for c in s.get("concurrency", []):
        rows.append(
            (
                f"audio s per s, {c} streams",
                [_fmt(_get(r, "concurrency", str(c), "audio_s_per_s")) for _, r in cols],
            )
        )
    if str(s.get("device", "")).startswith("cuda"):
        for c in s.get("concurrency", []):
            rows.append(
                (
                    f"GPU busy share, {c} streams",
                    [_fmt(_get(r, "concurrency", str(c), "gpu_busy")) for _, r in cols],
                )
            )
    for rate in s.get("arrival_rates") or []:
        key = str(float(rate))
        rows.append(
            (
                f"{rate:g} requests/s arriving at random: first audio p50 / p95 (s)",
                [
                    _pair(
                        _get(r, "arrivals", key, "first_audio_p50_s"),
                        _get(r, "arrivals", key, "first_audio_p95_s"),
                    )
                    for _, r in cols
                ],
            )
        )
    for rate in ("20", "35", "50"):
        rows.append(
            (
                f"text streamed in at {rate} tokens/s: first audio / playback stalls (s)",
                [
                    _pair(_get(r, "realtime", rate, "first_audio_s"), _get(r, "realtime", rate, "stall_s"))
                    for _, r in cols
                ],
            )
        )
    if s.get("longform_frames"):
        lf = next((r["longform"] for _, r in cols if isinstance(r.get("longform"), dict)), {})
        rows.append(
            (
                f"long text ({lf.get('chars', '?')} chars, {s['longform_frames']} frames) whole / in "
                f"{lf.get('parts', '?')} parts one at a time / {lf.get('parallel', '?')} at once (s)",
                [
                    " / ".join(
                        _fmt(_get(r, "longform", k, "seconds"), 1)
                        for k in ("whole", "one_at_a_time", "at_once")
                    )
                    if r.get("longform")
                    else "-"
                    for _, r in cols
                ],
            )
        )
    for name, n in (s.get("text_frames") or {}).items():
        rows.append(
            (
                f"text {name} ({len_of(name)} chars, {n} frames) (s)",
                [_fmt(_get(r, "texts", name, "seconds"), 1) for _, r in cols],
            )
        )
    rows.append(("RSS after load (MiB)", [_fmt(_get(r, "memory", "rss_after_load_mib"), 0) for _, r in cols]))
    rows.append(("peak RSS (MiB)", [_fmt(_get(r, "memory", "peak_rss_mib"), 0) for _, r in cols]))
    if s["device"].startswith("cuda"):
        rows.append(
            ("peak CUDA memory (MiB)", [_fmt(_get(r, "memory", "cuda_peak_mib"), 0) for _, r in cols])
        )
    rows.append(("all runs made every frame", [_fmt(_all_ok(r)) for _, r in cols]))

    gpu = m.get("gpu")
    where = f"{gpu} ({m.get('gpu_memory_gib')} GiB), " if gpu else ""
    lines = [
        f"Machine: {where}{m['cpu']}, {m['usable_cores']} cores, {m['ram_gib']} GiB RAM; torch {m['torch']}; "
        f"load average at start {m.get('load_average_at_start')}",
        f"Model: {s['size']} sizes ({s.get('variant', 'base')}), random weights, on {s['device']}; "
        f"{frames} frames per request, "
        f"{'sampling' if s.get('sample') else 'greedy'}, end of speech disabled"
        + (f"; serving engine: up to {s['max_batch']} requests at once" if s.get("max_batch") else "")
        + (f"; {s['idle_models']} more model(s) loaded beside it, idle" if s.get("idle_models") else ""),
        "",
        "| | " + " | ".join(name for name, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    lines += [f"| {label} | " + " | ".join(vals) + " |" for label, vals in rows]
    errors = [f"{name}: {r['error']}" for name, r in cols if "error" in r]
    errors += [f"{name}: incomplete, {r['incomplete']}" for name, r in cols if "incomplete" in r]
    if s.get("stopped"):
        errors.append(str(s["stopped"]))
    if s.get("official_status") and s["official_status"] != "measured":
        errors.append(f"official: {s['official_status']}")
    if errors:
        lines += [""] + [f"- {e}" for e in errors]
    lines += _ratio_lines(doc) + _target_lines(doc)
    return "\n".join(lines)


def len_of(name: str) -> int:
    from .workload import TEXTS

    return len(TEXTS[name])


def _ratio_lines(doc: dict) -> list[str]:
    r = doc.get("ratios") or {}
    if not r:
        return []
    modes = list((doc.get("utter") or {}).keys())
    lines = [
        "",
        f"Ratios, utter / {r['reference']} (times: lower is better; throughput: higher is better)",
        "",
    ]
    lines += ["| | " + " | ".join(f"utter {m}" for m in modes) + " |", "|---|" + "---:|" * len(modes)]
    for label, key in (
        ("generation (ms/frame)", "gen_ms"),
        ("all in (ms/frame)", "total_ms"),
        ("`say`, whole command", "say_seconds"),
        ("first audio", "ttfa_seconds"),
        ("cold start", "cold_start_seconds"),
        ("peak RSS", "peak_rss"),
    ):
        vals = r.get(key) or {}
        lines.append(f"| {label} | " + " | ".join(_fmt(vals.get(m)) for m in modes) + " |")
    for c, v in (r.get("audio_s_per_s") or {}).items():
        lines.append(f"| audio s per s, {c} streams ({r['primary']}) | {_fmt(v)} |" + " |" * (len(modes) - 1))
    for t, v in (r.get("text_seconds") or {}).items():
        lines.append(f"| text {t} ({r['primary']}) | {_fmt(v)} |" + " |" * (len(modes) - 1))
    return lines


def _target_lines(doc: dict) -> list[str]:
    ts = doc.get("targets") or []
    if not ts:
        return []
    lines = [
        "",
        "Targets (issue #3"
        + ("" if ts[0]["applies"] else "; stated for 0.6B sizes, shown for reference")
        + "):",
    ]
    for t in ts:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["passed"]]
        lines.append(f"- [{mark}] {t['target']}: {_fmt(t['value'], 3)} (limit {t['limit']})")
    return lines


# ----------------------------------------------------------------------------- files
def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def plot(doc: dict, path: Path) -> bool:
    """Four panels: ms per frame by part, throughput vs streams, first audio, text times.
    Returns False (with a logged hint) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("no plot: matplotlib is not installed (pip install 'utter[bench]')")
        return False
    cols = [(n, r) for n, r in _columns(doc) if "error" not in r]
    names = [n for n, _ in cols]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    bottom = [0.0] * len(cols)
    for key, label in (
        ("talker_ms", "talker"),
        ("code_predictor_ms", "code predictor"),
        ("codec_ms", "codec decode"),
    ):
        vals = [_get(r, "frame", key) or 0.0 for _, r in cols]
        ax.bar(names, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.axhline(80, color="grey", linestyle="--", linewidth=1, label="real time (80 ms)")
    ax.set_title("time per frame, 1 stream (ms)")
    ax.legend()
    ax = axes[0][1]
    for name, r in cols:
        conc = r.get("concurrency") or {}
        if conc:
            xs = [int(c) for c in conc]
            ax.plot(xs, [conc[c]["audio_s_per_s"] for c in conc], marker="o", label=name)
    ax.set_xticks(doc["settings"].get("concurrency") or [1])
    ax.set_title("aggregate audio seconds per second")
    ax.set_xlabel("concurrent streams")
    ax.legend()
    ax = axes[1][0]
    colors = ["tab:blue" if r.get("system") == "utter" else "tab:orange" for _, r in cols]
    ax.bar(names, [_get(r, "ttfa", "seconds") or 0.0 for _, r in cols], color=colors)
    ax.set_title("time to first audio (s); official: whole request, no streaming")
    ax = axes[1][1]
    texts = list(doc["settings"].get("text_frames") or {})
    with_texts = [(n, r) for n, r in cols if r.get("texts")]
    width = 0.8 / max(len(with_texts), 1)
    for i, (name, r) in enumerate(with_texts):
        xs = [j + i * width for j in range(len(texts))]
        ax.bar(xs, [_get(r, "texts", t, "seconds") or 0.0 for t in texts], width=width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(texts))], texts)
    ax.set_title("time to speak each text (s)")
    if with_texts:
        ax.legend()
    for a in (axes[0][0], axes[1][0]):
        a.tick_params(axis="x", labelrotation=20)
    s, m = doc["settings"], doc["machine"]
    fig.suptitle(
        f"utter bench: {s['size']} on {s['device']} ({m.get('gpu') or m['cpu']}), {s['frames']} frames"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
