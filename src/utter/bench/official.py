"""Measure the official ``qwen-tts`` package on the same checkpoint and inputs (one dtype per worker).

It is driven through its public ``generate_voice_clone`` with greedy decoding (or its sampling
defaults with ``--sample``) and ``max_new_tokens = frames + 1`` (it yields at most
``max_new_tokens - 1`` frames). End of speech is disabled by wrapping its talker's ``generate``:
the real EOS id joins ``suppress_tokens`` (the same masking our ``ignore_eos`` does) and
``eos_token_id`` becomes the codec pad id, which is suppressed too and so never produced.

Timing comes from wrappers on its live objects (no profiler): ``talker.forward`` (the first call
of a generate is the prefill), ``talker.code_predictor.generate`` (codebooks 1-15, called inside
each talker step), ``talker.generate`` (the decode loop) and ``speech_tokenizer.decode``.
Per frame: ``gen_ms`` = (talker.generate - prefill) / frames, ``code_predictor_ms`` = predictor /
frames, ``talker_ms`` = the difference. Its loop runs one talker step more than it keeps (the
token after the last frame), which adds 1/frames to its ``gen_ms``.

It has no streaming API: the first audio arrives with the whole result, so its ``ttfa`` is the
time of one whole request; "concurrency N" is N requests served one by one, as it would serve
them. Served one by one, N requests take N times one request's time whatever N is, so the rate is
measured once, over ``ONE_BY_ONE_RUNS`` requests run back to back (fewer when every N is
smaller), and each N's figures follow from it (``requests_run`` says how many ran): 64 requests
at the package's 0.7x real time on a GPU would take 20 minutes, a GPU lease's whole budget.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from .common import Probe, import_qwen_tts, peak_memory, result_head, save_partial, sync, timed
from .workload import LANGUAGE, REF_TEXT, SAMPLE_RATE, SHORT, TEXTS

logger = logging.getLogger(__name__)

ONE_BY_ONE_RUNS = 4  # requests run back to back to measure serving one by one


class _Official:
    """The loaded official model with its EOS disabled and its parts probed."""

    def __init__(self, qwen_tts, folder: str, device: str, dtype: str, sample: bool, seed: int) -> None:
        import torch

        self.torch, self.device, self.sample, self.seed = torch, device, sample, seed
        self.tts = qwen_tts.Qwen3TTSModel.from_pretrained(
            folder, device_map=device, dtype=getattr(torch, dtype)
        )
        inner = self.tts.model
        tc = inner.config.talker_config
        self.talker = inner.talker
        self.eos, self.never = tc.codec_eos_token_id, tc.codec_pad_id
        self.probe = Probe(device)
        self.lengths: list[int] = []  # frames per request of the last call
        self._disable_eos()
        self.probe.wrap(self.talker, "forward", "forward")
        self.probe.wrap(self.talker.code_predictor, "generate", "cp")
        self.probe.wrap(inner.speech_tokenizer, "decode", "codec")
        self._spy_codes(inner)

    def _disable_eos(self) -> None:
        """Wrap talker.generate (also timed as "loop"): suppress EOS, stop on a never-made id."""
        talker, eos, never = self.talker, self.eos, self.never
        original = talker.generate

        @functools.wraps(original)
        def generate(*args, **kwargs):
            kwargs["suppress_tokens"] = sorted(set(kwargs.get("suppress_tokens") or []) | {eos, never})
            kwargs["eos_token_id"] = never
            return original(*args, **kwargs)

        talker.generate = generate
        self.probe.wrap(talker, "generate", "loop")

    def _spy_codes(self, inner) -> None:
        """Record how many frames each request of a call came back with (EOS would cut them)."""
        original, lengths = inner.generate, self.lengths

        @functools.wraps(original)
        def generate(*args, **kwargs):
            codes, hidden = original(*args, **kwargs)
            lengths[:] = [int(c.shape[0]) for c in codes]
            return codes, hidden

        inner.generate = generate

    def run(self, text: str, frames: int, **voice) -> tuple[list, int]:
        """One generate_voice_clone call of ``frames`` frames; ``voice``: ref_audio+ref_text or
        voice_clone_prompt."""
        if self.sample:
            self.torch.manual_seed(self.seed)
            decoding: dict = {}
        else:
            decoding = {"do_sample": False, "subtalker_dosample": False}
        return self.tts.generate_voice_clone(
            text=text, language=LANGUAGE, max_new_tokens=frames + 1, **decoding, **voice
        )

    def frames_ok(self, frames: int) -> bool:
        return bool(self.lengths) and all(n == frames for n in self.lengths)


def _frame_run(model: _Official, prompt, frames: int) -> dict:
    model.probe.reset()
    start = time.perf_counter()
    wavs, sr = model.run(SHORT, frames, voice_clone_prompt=prompt)
    sync(model.device)
    wall = time.perf_counter() - start
    calls = {k: list(v) for k, v in model.probe.calls.items()}
    if model.device.startswith("cuda"):  # the probes sync mid-step; time the wall clock without them
        model.probe.active = False
        start = time.perf_counter()
        wavs, sr = model.run(SHORT, frames, voice_clone_prompt=prompt)
        sync(model.device)
        wall = time.perf_counter() - start
        model.probe.active = True
    n = model.lengths[0] if model.lengths else 0
    per = 1000.0 / max(n, 1)
    prefill = calls["forward"][0] if calls.get("forward") else 0.0
    gen = (sum(calls.get("loop", [])) - prefill) * per
    cp = sum(calls.get("cp", [])) * per
    return {
        "frames": n,
        "frames_ok": model.frames_ok(frames),
        "prefill_ms": 1000.0 * prefill,
        "talker_ms": gen - cp,
        "code_predictor_ms": cp,
        "gen_ms": gen,
        "codec_ms": sum(calls.get("codec", [])) * per,
        "total_ms": wall * per,
        "wall_s": wall,
        "audio_s": len(wavs[0]) / sr,
        "x_realtime": len(wavs[0]) / sr / wall,
    }


def _one_by_one(model: _Official, prompt, frames: int, runs: int) -> dict:
    """``runs`` requests back to back: the rate of serving requests one by one."""
    start = time.perf_counter()
    audio_s, ok = 0.0, True
    for _ in range(runs):
        wavs, sr = model.run(SHORT, frames, voice_clone_prompt=prompt)
        audio_s += len(wavs[0]) / sr
        ok = ok and model.frames_ok(frames)
    sync(model.device)
    return {"runs": runs, "frames_ok": ok, "wall_s": time.perf_counter() - start, "audio_s": audio_s}


def _served_one_by_one(measured: dict, frames: int, streams: int) -> dict:
    """``streams`` requests served one by one, from the measured rate: the last one's audio comes
    after all of theirs, so each stream runs at the rate over ``streams``."""
    per_request_s = measured["wall_s"] / measured["runs"]
    audio_per_request = measured["audio_s"] / measured["runs"]
    rate = audio_per_request / per_request_s
    return {
        "streams": streams,
        "frames": frames,
        "frames_ok": measured["frames_ok"],
        "wall_s": per_request_s * streams,
        "audio_s": audio_per_request * streams,
        "audio_s_per_s": rate,
        "x_realtime_per_stream": rate / streams,
        "ttfa_mean_s": None,
        "requests_run": measured["runs"],
    }


def measure(spec: dict) -> dict:
    """Run the measurements named in ``spec["suite"]`` for one official dtype."""
    import soundfile as sf
    import torch

    spawned, device, dtype = spec["spawned_at"], spec["device"], spec["mode"]
    suite, frames, workdir = set(spec["suite"]), spec["frames"], Path(spec["workdir"])
    torch.set_grad_enabled(False)
    qwen_tts = import_qwen_tts()
    imported = time.time()
    with timed("load"):
        model = _Official(
            qwen_tts, spec["model"], device, dtype, spec.get("sample", False), spec.get("seed", 0)
        )
        sync(device)
    ready = time.time()
    out = result_head("official", dtype, device, spawned, imported, ready)
    if "say" in suite:  # the recording goes in as a path, as a user of the package passes it
        with timed("say"):
            wavs, sr = model.run(SHORT, frames, ref_audio=str(spec["ref_wav"]), ref_text=REF_TEXT)
        sf.write(workdir / f"say-official-{dtype}.wav", wavs[0], sr)
        out["say"] = {
            "frames": model.lengths[0] if model.lengths else 0,
            "frames_ok": model.frames_ok(frames),
            "audio_s": len(wavs[0]) / sr,
            "seconds": time.time() - spawned,
        }
        save_partial(spec, out)
    prompt = model.tts.create_voice_clone_prompt(ref_audio=str(spec["ref_wav"]), ref_text=REF_TEXT)
    if "frame" in suite:
        with timed("frame"):
            out["frame"] = _frame_run(model, prompt, frames)
        # No streaming: the first audio is the whole request.
        out["ttfa"] = {
            "seconds": out["frame"]["wall_s"],
            "all_s": [out["frame"]["wall_s"]],
            "streaming": False,
        }
        save_partial(spec, out)
    if "concurrency" in suite:
        concurrency = spec.get("concurrency") or [1]
        runs = min(max(concurrency), ONE_BY_ONE_RUNS)
        with timed(f"{runs} requests one by one"):
            measured = _one_by_one(model, prompt, frames, runs)
        out["concurrency"] = {str(c): _served_one_by_one(measured, frames, c) for c in concurrency}
        out["concurrency_mode"] = f"requests served one by one (the rate of {runs} run back to back)"
        save_partial(spec, out)
    if "texts" in suite:
        out["texts"] = {}
        for name, n in spec.get("texts", {}).items():
            with timed(f"text {name}"):
                start = time.perf_counter()
                wavs, sr = model.run(TEXTS[name], n, voice_clone_prompt=prompt)
                sync(device)
                wall = time.perf_counter() - start
            out["texts"][name] = {
                "chars": len(TEXTS[name]),
                "frames": model.lengths[0] if model.lengths else 0,
                "frames_ok": model.frames_ok(n),
                "seconds": wall,
                "audio_s": len(wavs[0]) / SAMPLE_RATE,
                "x_realtime": len(wavs[0]) / SAMPLE_RATE / wall,
            }
            save_partial(spec, out)
    out["memory"].update(peak_memory(device))
    return out
