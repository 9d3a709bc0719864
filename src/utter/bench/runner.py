"""Measure our engine: one weight mode in one worker process (see ``worker.py``).

What is timed, all with end-of-speech disabled (``GenerationOptions.ignore_eos``) so every run
makes exactly the frames asked for (checked: ``frames_ok``):

- ``load``: cold start, from the parent's spawn of this process to a loaded engine (imports
  included), split into ``import_s`` and ``load_s``. The checkpoint is usually in the OS page
  cache by then (every worker reads the same folder): a cold process, not a cold disk.
- ``say``: what ``utter say`` does, from process start: load, make the voice from the reference
  recording, generate ``frames`` frames of the short text, decode, write a WAV.
- ``frame``: a warm ``generate`` of ``frames`` frames at batch size 1, split by probes on the
  runner: ``prefill_ms`` (once), then per frame ``code_predictor_ms`` (codebooks 1-15),
  ``talker_ms`` (the rest of a decode step: talker forward, sampling, bookkeeping),
  ``gen_ms`` (the two together) and ``codec_ms`` (one-shot decode, as ``utter say`` does it).
- ``ttfa``: time to first audio through the :class:`Batcher` (streaming) with a voice loaded
  from a file: first chunk's arrival minus submit.
- ``concurrency``: N streams submitted together to one Batcher; aggregate audio seconds per
  wall second until the last one ends.
- ``texts``: the three seed texts, each with a frame budget from its length (``workload``).
- ``arrivals``: requests arriving at random (Poisson) at the given rates for a while; first
  audio p50/p95 from each request's arrival (``arrivals.py``).
- ``realtime``: the medium text arriving at 20/35/50 LLM tokens per second while it is spoken
  (``realtime.py``): first audio after the first text, and whether playback ever stalls.
- ``longform``: the long text whole, in its parts one at a time and several at once, as the
  server speaks long texts (``longform.py``): seconds to the whole audio.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from .common import Probe, median, peak_memory, result_head, save_partial, sync, timed
from .workload import FRAME_SECONDS, LANGUAGE, REF_TEXT, SAMPLE_RATE, SHORT, TEXTS

logger = logging.getLogger(__name__)

# Who speaks in a model of each kind: a voice cloned from the reference (Base), a preset speaker
# with an instruction (CustomVoice), a described voice (VoiceDesign).
PRESET_SPEAKER = "Vivian"
INSTRUCT = "Speak clearly and warmly."
DESCRIPTION = "A warm, clear female voice, calm and friendly."


@dataclasses.dataclass
class Speaker:
    """Who speaks in every measured request, whatever the model's kind."""

    voice: object = None  # a VoicePrompt (Base)
    speaker: str | None = None
    instruct: str | None = None

    @classmethod
    def for_engine(cls, engine, ref_wav: str) -> Speaker:
        if engine.variant == "custom_voice":
            return cls(None, PRESET_SPEAKER, INSTRUCT if engine.config.supports_instruct else None)
        if engine.variant == "voice_design":
            return cls(None, None, DESCRIPTION)
        return cls(engine.create_voice(ref_wav, ref_text=REF_TEXT))

    @classmethod
    def load(cls, path: Path, like: Speaker) -> Speaker:
        """A stored voice read back from its file (Base), as a server does per request."""
        from ..engine.voice import VoicePrompt

        if like.voice is None:
            return like
        return cls(VoicePrompt.load(path))

    def save(self, path: Path) -> None:
        if self.voice is not None:
            self.voice.save(path)

    def request(self, text: str, opts, **extra):
        from ..engine.engine import Request

        who = {"speaker": self.speaker, "instruct": self.instruct}
        return Request(text, self.voice, LANGUAGE, opts, **who, **extra)


CPU_MODE_ORDER = ("int8", "float16", "bfloat16", "float32")  # float16: packed fp16 weights on x86
GPU_MODE_ORDER = ("bfloat16", "float16", "float32")  # int8 has no fast GPU kernel yet


def available_modes(device: str) -> list[str]:
    """Weight modes to compare on ``device``, the engine's default (for one stream) first."""
    from ..engine.cpu.quant import WEIGHT_MODES, default_weight_mode

    default = default_weight_mode(device)
    order = GPU_MODE_ORDER if device.startswith("cuda") else CPU_MODE_ORDER
    ranked = [m for m in order if m in WEIGHT_MODES] + [m for m in WEIGHT_MODES if m not in order]
    if device.startswith("cuda") and "int8" in ranked and default != "int8":
        ranked.remove("int8")  # no fast int8 GPU kernel: it would only measure the fallback
    return [default] + [m for m in ranked if m != default]


COMPILED = "+compile"  # a weight mode with this suffix runs with compiled decoder layers


def load_engine(model: str, device: str, mode: str, max_batch: int):
    """Our engine with ``mode`` weights (see ``utter.engine.cpu.quant``); ``<mode>+compile``
    compiles its decoder layers (``utter.engine.cuda.fusion``)."""
    from ..engine.engine import Engine

    compiled = mode.endswith(COMPILED)
    weights = mode.removesuffix(COMPILED)
    if compiled and not device.startswith("cuda"):
        from ..engine.cuda.fusion import profile_kernels

        profile_kernels()  # compiled CPU kernels counted per frame (see _step_counts)
    return Engine.load(model, device=device, weight_mode=weights, max_batch=max_batch, compile=compiled)


def engine_kernels(engine) -> str:
    """Which kernels multiply an engine's talker: the int8 or float16 CPU kernel its batch limit
    picked (``quant.int8_kernel``, ``native_max_batch``) and the prefills' own, or the plain
    PyTorch product; a serving table says which kernel its figures are of."""
    from ..engine.cpu.quant import Fp16Linear, int8_kernels

    own, prefills = int8_kernels(engine.talker)
    steps = {f"int8 {k}" for k in own} | {
        "float16 native" if m.native is not None else "float16 fbgemm"
        for m in engine.talker.modules()
        if isinstance(m, Fp16Linear)
    }
    text = "/".join(sorted(steps)) or "torch"
    return text + (f", prefills {'/'.join(f'int8 {k}' for k in prefills)}" if prefills else "")


def _options(engine, frames: int, sample: bool, seed: int):
    from ..engine.sampling import GenerationOptions

    base = engine.default_options() if sample else GenerationOptions.greedy()
    return dataclasses.replace(base, max_frames=frames, seed=seed, ignore_eos=True)


def _frame_run(engine, voice, opts, device: str) -> dict:
    """One warm B=1 generation of the short text, split into prefill / talker / predictor / codec."""

    runner = engine.runner
    with Probe(device) as probe:
        probe.wrap(runner, "add_many", "prefill")  # admission: every request's prefill
        probe.wrap(runner, "step", "step")
        # With fixed-shape (CUDA graph) steps the code predictor runs inside graphs.frame (a
        # replay): _predict_codebooks is only called at capture, and timing it read 0.0 ms.
        cp_owner, cp_name = (
            (runner.graphs, "frame") if runner.graphs is not None else (runner, "_predict_codebooks")
        )
        has_cp = probe.wrap(cp_owner, cp_name, "cp")
        _probe_codec(probe, engine)
        start = time.perf_counter()
        result = engine.generate_batch([voice.request(SHORT, opts)])[0]
        sync(device)
        wall = time.perf_counter() - start
        tot = probe.totals
    if device.startswith("cuda"):  # the probes sync mid-step; time the wall clock without them
        start = time.perf_counter()
        result = engine.generate_batch([voice.request(SHORT, opts)])[0]
        sync(device)
        wall = time.perf_counter() - start
    n = int(result.codes.shape[0])
    per = 1000.0 / max(n, 1)
    gen = tot.get("step", 0.0) * per
    cp = tot["cp"] * per if has_cp else None
    return {
        "frames": n,
        "frames_ok": n == opts.max_frames and result.finish_reason == "max_frames",
        "prefill_ms": 1000.0 * tot.get("prefill", 0.0),
        "talker_ms": gen - (cp or 0.0),
        "code_predictor_ms": cp,
        "gen_ms": gen,
        "codec_ms": tot.get("codec", 0.0) * per,
        "total_ms": wall * per,
        "wall_s": wall,
        "audio_s": n * FRAME_SECONDS,
        "x_realtime": n * FRAME_SECONDS / wall,
    }


def _step_counts(engine, voice, opts, device: str) -> dict:
    """What one warm decode step of one stream dispatches: aten ops (the CPU-side count; work
    inside native kernels or replayed CUDA graphs dispatches none) and, on CUDA, the GPU kernels
    the profiler sees."""
    from ..engine.opcount import count_kernels, count_ops

    runner = engine.runner
    runner.add(engine._sequence(voice.request(SHORT, opts)))
    try:
        runner.step()
        # Dispatch modes and compiled code do not mix: compiled layers get the profiler's count.
        compiled = engine.talker.model.fused is not None
        ops = None if compiled else count_ops(runner.step)[1]
        out = {
            "ops_per_frame": None if ops is None else ops.total,
            "kernels_per_frame": count_kernels(runner.step)[1] if compiled else ops.kernels,
            "compiled": compiled,
        }
        if device.startswith("cuda"):
            from torch.autograd import DeviceType
            from torch.profiler import ProfilerActivity, profile

            sync(device)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                runner.step()
                sync(device)
            out["gpu_kernels_per_frame"] = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    finally:
        for seq in list(runner.rows):
            runner.cancel(seq)
    return out


def _probe_codec(probe: Probe, engine) -> None:
    """Time codec decoding, one-shot (``codec.decode``) and streamed (``AudioStream.push``, on
    every stream: the engine forks per-request streams from a warm one per voice); reference
    codes pushed as left context count too, the first time a voice is used."""
    from ..engine.streaming import AudioStream

    probe.wrap(engine.codec, "decode", "codec")
    probe.wrap(AudioStream, "push", "codec")


def _ttfa(batcher, voice_path: Path, speaker: Speaker, opts, repeats: int) -> dict:
    """Streaming first-chunk latency with a stored voice; the stream is cancelled after it."""

    times = []
    for _ in range(repeats):
        voice = Speaker.load(voice_path, speaker)
        stream = batcher.submit(voice.request(SHORT, opts))
        chunks = iter(stream)
        first = next(chunks, None)
        stream.cancel()
        for _ in chunks:
            pass
        if first is None or stream.first_audio_at is None:
            raise RuntimeError(f"no audio came back (finish reason {stream.finish_reason})")
        times.append(stream.first_audio_at - stream.submitted_at)
    return {
        "seconds": median(times),
        "all_s": times,
        "first_chunk_frames": batcher.first_chunk_frames,
        "streaming": True,
    }


def _concurrent(batcher, voice, opts, streams: int) -> dict:
    """``streams`` requests submitted together; aggregate audio seconds per wall second (and on
    CUDA the GPU's busy share in the middle of the run, see ``gpubusy.py``)."""
    from .gpubusy import BusySampler

    device = str(batcher.engine.device)
    with BusySampler(device) as busy:
        start = time.perf_counter()
        live = [batcher.submit(voice.request(SHORT, opts)) for _ in range(streams)]
        audio = [s.audio() for s in live]
        wall = time.perf_counter() - start
    audio_s = sum(len(a) for a in audio) / SAMPLE_RATE
    first = [s.first_audio_at - s.submitted_at for s in live if s.first_audio_at is not None]
    return {
        "streams": streams,
        "frames": opts.max_frames,
        "frames_ok": all(s.finish_reason == "max_frames" and s.frames == opts.max_frames for s in live),
        "wall_s": wall,
        "audio_s": audio_s,
        "audio_s_per_s": audio_s / wall,
        "x_realtime_per_stream": audio_s / streams / wall,
        "ttfa_mean_s": sum(first) / len(first) if first else None,
        "gpu_busy": busy.share,
    }


def _text_run(engine, voice, opts, name: str, frames: int, device: str) -> dict:

    text = TEXTS[name]
    o = dataclasses.replace(opts, max_frames=frames)
    start = time.perf_counter()
    result = engine.generate_batch([voice.request(text, o)])[0]
    sync(device)
    wall = time.perf_counter() - start
    n = int(result.codes.shape[0])
    return {
        "chars": len(text),
        "frames": n,
        "frames_ok": n == frames and result.finish_reason == "max_frames",
        "seconds": wall,
        "audio_s": len(result.audio) / SAMPLE_RATE,
        "x_realtime": len(result.audio) / SAMPLE_RATE / wall,
    }


def _solo(engine, spec: dict, opts, out: dict) -> Speaker:
    """Who speaks, then the one-stream measurements (``say``, ``frame``, ``texts``) into ``out``."""
    from ..audio import write_wav
    from ..engine.cuda import fusion

    fusion.prepare_thread()  # compiled layers run in this thread (compiler settings are per thread)

    spawned, device, mode = spec["spawned_at"], spec["device"], spec["mode"]
    suite, frames, workdir = set(spec["suite"]), spec["frames"], Path(spec["workdir"])
    # `utter say` from process start: voice from the recording, generate, decode, write.
    t0 = time.time()
    voice = Speaker.for_engine(engine, spec["ref_wav"])
    t1 = time.time()
    if "say" in suite:
        with timed("say"):
            result = engine.generate_batch([voice.request(SHORT, opts)])[0]
        write_wav(workdir / f"say-utter-{mode}.wav", result.audio, SAMPLE_RATE)
        done = time.time()
        n = int(result.codes.shape[0])
        out["say"] = {
            "frames": n,
            "frames_ok": n == frames and result.finish_reason == "max_frames",
            "audio_s": len(result.audio) / SAMPLE_RATE,
            "seconds": done - spawned,
            "voice_s": t1 - t0,
            "generate_s": done - t1,
        }
        save_partial(spec, out)
    if "frame" in suite:
        with timed("frame"):
            out["frame"] = _frame_run(engine, voice, opts, device)
        with timed("step counts"):
            out["frame"].update(_step_counts(engine, voice, opts, device))
        save_partial(spec, out)
    if "texts" in suite:
        out["texts"] = {}
        for name, n in spec.get("texts", {}).items():
            with timed(f"text {name}"):
                out["texts"][name] = _text_run(engine, voice, opts, name, n, device)
            save_partial(spec, out)
    return voice


def measure(spec: dict) -> dict:
    """Run the measurements named in ``spec["suite"]`` for one weight mode; returns a JSON-able dict."""
    import torch

    from ..engine.cpu.threads import call_in_own_thread
    from ..engine.sched.batcher import Batcher

    spawned, device, mode = spec["spawned_at"], spec["device"], spec["mode"]
    suite, frames, workdir = set(spec["suite"]), spec["frames"], Path(spec["workdir"])
    torch.set_grad_enabled(False)
    imported = time.time()
    with timed("load"):
        engine = load_engine(spec["model"], device, mode, max_batch=1)  # as `utter say` loads it
        sync(device)
    ready = time.time()
    out = result_head("utter", mode, device, spawned, imported, ready)
    out["load"]["phases_s"] = dict(engine.load_seconds)  # where the load went
    save_partial(spec, out)
    opts = _options(engine, frames, spec.get("sample", False), spec.get("seed", 0))
    # One stream at a time, in a thread that ends before the serving part: its OpenMP team goes
    # with it, and the batcher's is the only one, as in a server (see engine/cpu/threads.py).
    voice = call_in_own_thread(_solo, engine, spec, opts, out)
    voice_path = workdir / f"voice-utter-{mode}.safetensors"
    voice.save(voice_path)
    if suite & {"ttfa", "concurrency", "realtime", "arrivals", "longform"}:
        # A server's engine: sized (and, on CPUs, its kernels chosen) for its batch limit, by
        # default the largest concurrency (more requests than the limit queue).
        concurrency = spec.get("concurrency") or [1]
        max_batch = spec.get("max_batch") or max(concurrency)
        del engine
        started = time.time()
        with timed("serving load"):
            engine = load_engine(spec["model"], device, mode, max_batch=max_batch)
        out["load"]["serving_load_s"] = time.time() - started
        out["serving_max_batch"] = max_batch
        out["serving_kernels"] = engine_kernels(engine)
        save_partial(spec, out)
        idle = _idle_models(spec, mode, max_batch, voice, opts)
        out["idle_models"] = len(idle)
        with Batcher(engine, max_batch=max_batch) as batcher:
            if "ttfa" in suite:
                with timed("first audio"):
                    out["ttfa"] = _ttfa(batcher, voice_path, voice, opts, spec.get("ttfa_repeats", 3))
                save_partial(spec, out)
            if "concurrency" in suite:
                out["concurrency"] = {}
                for c in concurrency:
                    with timed(f"concurrency {c}"):
                        out["concurrency"][str(c)] = _concurrent(batcher, voice, opts, c)
                    save_partial(spec, out)
                out["concurrency_mode"] = (
                    f"one Batcher (up to {max_batch} at once), all streams submitted together"
                )
            if "arrivals" in suite:
                from .arrivals import measure_arrivals

                rates, seconds = spec.get("arrival_rates") or [1.0], spec.get("arrival_seconds", 30.0)
                with timed(f"arrivals {rates}/s for {seconds:.0f} s"):
                    out["arrivals"] = measure_arrivals(
                        batcher, voice, opts, rates, seconds, spec.get("seed", 0)
                    )
                save_partial(spec, out)
            if "realtime" in suite:
                from .realtime import measure_realtime

                with timed("realtime text-in"):
                    out["realtime"] = measure_realtime(batcher, voice, opts, frames)
                save_partial(spec, out)
            if "longform" in suite:
                from .longform import measure_longform

                with timed("long text whole and in parts"):
                    out["longform"] = measure_longform(batcher, voice, opts, spec["longform_frames"])
        for extra in idle:
            extra.stop()
    out["memory"].update(peak_memory(device))
    return out


def _idle_models(spec: dict, mode: str, max_batch: int, voice: Speaker, opts) -> list:
    """``spec["idle_models"]`` more engines of the same checkpoint, each with a started batcher
    that has served one short request and then idles: what a server holding a CustomVoice and a
    VoiceDesign model beside its Base one runs the measured model next to."""
    from ..engine.sched.batcher import Batcher

    batchers = []
    for i in range(spec.get("idle_models", 0)):
        with timed(f"idle model {i + 1}"):
            engine = load_engine(spec["model"], spec["device"], mode, max_batch)
            batcher = Batcher(engine, max_batch=max_batch).start()
            batchers.append(batcher)
            batcher.submit(voice.request(SHORT, dataclasses.replace(opts, max_frames=4))).audio()
    return batchers
