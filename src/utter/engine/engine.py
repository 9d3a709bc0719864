"""The public engine: load a checkpoint, turn reference audio into voices, turn text into speech.

Everything is built on one decode loop (:class:`~utter.engine.sched.runner.Runner`): a batch of
requests is a set of sequences stepped together, and frames come out as they are made.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLE_RATE, load_audio, resample
from .checkpoint import resolve_checkpoint, weight_files
from .config import GenerationDefaults, ModelConfig
from .cpu import native_stack
from .cpu.isa import fast_bfloat16
from .cpu.quant import (
    WEIGHT_MODES,
    Fp16Linear,
    Int8Linear,
    activation_dtype,
    apply_weight_mode,
    default_weight_mode,
    native_max_batch,
)
from .cpu.threads import call_in_own_thread
from .cuda import fusion
from .model.layers import fuse_projections
from .model.qwen3_tts import Qwen3TTSWeights
from .model.speaker_encoder import extract_speaker_embedding
from .model.speech_tokenizer import WEIGHTS_FILE, SpeechTokenizer, official_reference_cut
from .prompt import build_prompt
from .sampling import GenerationOptions, SamplingOptions
from .sched.runner import Runner, Sequence
from .sched.textfeed import TextFeed
from .streaming import CHUNK_FRAMES, FIRST_CHUNK_FRAMES, AudioStream, PcmChunker
from .text import ROLE_TOKENS, TARGET_TAIL, TextTokenizer, invalid_unicode_at
from .voice import VoicePrompt
from .warm import WarmVoices
from .weights import load_weights, release_file_views

logger = logging.getLogger(__name__)

# Runaway guard when end-of-speech never comes: generous next to real speech rates (about 3 to
# 4 frames per text token), so it only cuts audio that has gone wrong.
FRAMES_BASE = 24
FRAMES_PER_TOKEN = 8
# The most frames one request may ask for (5.5 minutes of audio). Its KV cache is sized from
# the request's limit, so an unbounded one lets a single request take all memory; longer texts
# are split (the studio does it). Servers may lower it (UTTER_MAX_FRAMES).
MAX_FRAMES = 4096


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str, available: bool = True) -> None:
    """A device this engine runs on (cpu, cuda, cuda:N), or a ValueError that says so (torch's own
    error for a typo lists twenty device kinds, none of which would run here); with
    ``available`` False only the name is checked (settings, before any GPU is looked at)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if available and kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available")


CPU_MAX_BATCH = 8  # a CPU server's default batch limit (see default_max_batch)


def default_max_batch(device: str | torch.device) -> int:
    """How many requests a server decodes together by default: 16 on GPUs, 8 on CPUs. On a CPU
    a step's cost grows with its rows, so more streams at once only share the same few audio
    seconds per second more thinly (on a 2-core CPU 16 streams made 2.7 against 8's 2.6): a
    ninth request queues for a free row rather than slow the eight that are speaking, and the
    8 rows stay within the native kernels on every CPU (``quant.native_max_batch``)."""
    return CPU_MAX_BATCH if torch.device(device).type == "cpu" else 16


@dataclass(frozen=True)
class Request:
    """One text to speak. With ``feed`` the text arrives in pieces while it is spoken (``text`` is
    then ignored; see textfeed.py).

    Who speaks depends on the model: a Base model speaks in a cloned ``voice``; a CustomVoice
    model in a preset ``speaker`` (``Engine.speakers``); a VoiceDesign model in the voice its
    ``instruct`` describes. ``instruct`` (how to speak: "slowly, whispering") also steers the
    1.7B CustomVoice model."""

    text: str
    voice: VoicePrompt | None = None
    language: str = "Auto"
    options: GenerationOptions | None = None
    feed: TextFeed | None = None
    speaker: str | None = None
    instruct: str | None = None
    # The official prompt layout to use: None picks the official default of the model's kind
    # (streaming text for Base, the whole text in the prompt for CustomVoice and VoiceDesign).
    non_streaming: bool | None = None


@dataclass
class Result:
    audio: np.ndarray  # mono float32 at 24 kHz
    codes: torch.Tensor  # [frames, num_codebooks]
    finish_reason: str  # "eos", "max_frames" or "cancelled"
    seconds: float  # wall time spent


def _load_talker(
    folder: Path, config: ModelConfig, dev: torch.device, dt: torch.dtype, mode: str, max_batch: int
) -> Qwen3TTSWeights:
    with torch.device("meta"):
        weights = Qwen3TTSWeights(config)
    # Modes that convert the Linear weights read them as stored; everything else is cast to the
    # activation dtype by apply_weight_mode.
    load_weights(weights, weight_files(folder), dev, None if mode in ("int8", "float16") else dt)
    if weights.speaker_encoder is not None:
        weights.speaker_encoder.to(dt)
    fuse_projections(weights.talker)
    # Small batches on a CPU: the products take the native kernels (see quant.int8_kernel) and,
    # where every one of a stack's products has, its decode steps run natively too.
    apply_weight_mode(weights.talker, mode, max_batch)
    release_file_views(weights, weight_files(folder))  # before the native stack reads any tensor
    if dev.type == "cpu" and max_batch <= native_max_batch() and native_stack.attach(weights.talker):
        logger.info("decode steps run in the native kernels (%s weights)", mode)
    return weights.eval()


def _load_codec(folder: Path, dev: torch.device, mode: str) -> SpeechTokenizer:
    codec = SpeechTokenizer.load(folder / "speech_tokenizer", device=dev, dtype=torch.float32)
    if mode != "float32" and fast_bfloat16(dev):
        codec.set_decoder_dtype(torch.bfloat16)  # float32 stays exact, for parity with the official one
    parts = torch.nn.ModuleList([codec.encoder, codec.decoder])
    release_file_views(parts, [folder / "speech_tokenizer" / WEIGHTS_FILE])
    return codec


class Engine:
    """A loaded Qwen3-TTS 12 Hz model: Base (clones voices), CustomVoice (preset speakers) or
    VoiceDesign (voices from a description)."""

    def __init__(
        self,
        folder: Path,
        config: ModelConfig,
        weights: Qwen3TTSWeights,
        codec: SpeechTokenizer,
        tokenizer: TextTokenizer,
        defaults: GenerationDefaults,
        device: torch.device,
        dtype: torch.dtype,
        weight_mode: str,
    ) -> None:
        self.folder = folder
        self.config = config
        self.weights = weights
        self.talker = weights.talker
        self.codec = codec
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.device = device
        self.dtype = dtype  # activation dtype (hidden states, KV caches)
        self.weight_mode = weight_mode
        self.max_batch = 16  # the rows its kernels were chosen for (``load`` sets it)
        self.runner = Runner(self.talker, config)
        self.warm = WarmVoices(codec)  # per voice: its reference codes pushed (see audio_stream)
        # Seconds per loading phase (checkpoint, talker, codec_tokenizer_wait, compile, graphs,
        # total), set by load: where a cold start goes.
        self.load_seconds: dict[str, float] = {}

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        model: str,
        device: str | None = None,
        dtype: str | None = None,
        cache_dir: str | None = None,
        cuda_graphs: bool | None = None,
        max_batch: int = 16,
        max_len: int = 4096,
        weight_mode: str | None = None,
        compile: bool | None = None,
    ) -> Engine:
        """Load a checkpoint folder or hub id (see :func:`resolve_checkpoint`).

        ``weight_mode`` (float32, bfloat16, float16 or int8; ``dtype`` is an alias for the float
        ones) defaults to the fastest safe mode for the device (see
        :func:`~utter.engine.cpu.quant.default_weight_mode`): int8 on CPUs, bfloat16 on GPUs.
        ``max_batch`` also picks the CPU kernels (the native ones for up to ``native_max_batch()``
        rows, else oneDNN or fbgemm int8, see ``quant.int8_kernel``) and, in every mode but
        float32, the codec decoder runs in bfloat16 where that is native.

        On CUDA the decode step runs from captured graphs (``cuda_graphs``, default on), with
        caches for ``max_batch`` concurrent requests of up to ``max_len`` positions allocated
        once; elsewhere caches grow as needed.

        ``compile`` (default: ``UTTER_COMPILE``, else off) fuses the decoder layers with
        torch.compile (see ``engine/cuda/fusion.py``; float weight modes), compiled here, before
        any graph is captured.

        The load runs in a thread of its own that ends with it: the OpenMP team its parallel
        work starts goes with that thread instead of staying in the caller's, where it would
        slow down the team that decodes (see ``engine/cpu/threads.py``).
        """
        args = (model, device, dtype, cache_dir, cuda_graphs, max_batch, max_len, weight_mode, compile)
        engine = call_in_own_thread(cls._load_here, *args)
        fusion.prepare_thread()  # compiled layers may run here too (compiler settings are per thread)
        return engine

    @classmethod
    def _load_here(
        cls,
        model: str,
        device: str | None,
        dtype: str | None,
        cache_dir: str | None,
        cuda_graphs: bool | None,
        max_batch: int,
        max_len: int,
        weight_mode: str | None,
        compile: bool | None,
    ) -> Engine:
        """:meth:`load`, in the calling thread."""
        device = device or default_device()
        check_device(device)
        if weight_mode and dtype and weight_mode != dtype:
            raise ValueError("give either a weight mode or a dtype, not both")
        mode = weight_mode or dtype or default_weight_mode(device)
        if mode not in WEIGHT_MODES:
            raise ValueError(f"unknown weight mode {mode!r}; choose one of {', '.join(WEIGHT_MODES)}")
        started = time.perf_counter()
        phases: dict[str, float] = {}  # where the load's time went (Engine.load_seconds)
        folder = resolve_checkpoint(model, cache_dir=cache_dir)
        config = ModelConfig.load(folder)  # resolve_checkpoint has checked it is a 12 Hz Base model
        phases["checkpoint"] = time.perf_counter() - started
        dev, dt = torch.device(device), activation_dtype(mode, device)
        # The codec and the text tokenizer load beside the talker (reading files, building
        # modules) while the talker's weights convert (C, without the GIL). Neither imports
        # transformers any more (seconds of the cold start): the text tokenizer is built from
        # its files, the codec's encoder is built on a thread after loading.
        with ThreadPoolExecutor(1, thread_name_prefix="utter-load") as pool:
            codec_loading = pool.submit(_load_codec, folder, dev, mode)
            tokenizer_loading = pool.submit(TextTokenizer, folder)
            mark = time.perf_counter()
            weights = _load_talker(folder, config, dev, dt, mode, max_batch)
            phases["talker"] = time.perf_counter() - mark
            mark = time.perf_counter()
            codec, tokenizer = codec_loading.result(), tokenizer_loading.result()
            phases["codec_tokenizer_wait"] = time.perf_counter() - mark  # beyond the talker's time
        engine = cls(
            folder,
            config,
            weights,
            codec,
            tokenizer,
            GenerationDefaults.load(folder),
            dev,
            dt,
            mode,
        )
        engine.max_batch = max_batch  # what its kernels (and graphs) were chosen and sized for
        if dev.type == "cuda" and cuda_graphs is not False:
            mark = time.perf_counter()
            engine.runner.enable_graphs(max_batch, max_len)
            phases["graphs"] = time.perf_counter() - mark
        if fusion.wanted(compile):  # on the runner's final caches: the variants serving needs
            mark = time.perf_counter()
            if fusion.apply(engine.runner):
                logger.info("decoder layers compiled in %.1fs", time.perf_counter() - mark)
            phases["compile"] = time.perf_counter() - mark
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # the phases above include their device work
        phases["total"] = time.perf_counter() - started
        engine.load_seconds = phases
        logger.info("loaded %s on %s (%s weights) in %.1fs", folder, device, mode, phases["total"])
        return engine

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def languages(self) -> list[str]:
        return self.config.languages

    def memory_bytes(self) -> int:
        """Bytes of the weights this engine's models hold (talker, speaker encoder, codec), packed
        and quantised copies included (the native layout, fbgemm's and oneDNN's packs)."""
        codec = self.codec
        roots = [self.weights, getattr(codec, "encoder", None), getattr(codec, "decoder", None)]
        seen: set[int] = set()
        total = 0
        for root in roots:
            if not isinstance(root, torch.nn.Module):
                continue
            for module in root.modules():
                total += module.packed_bytes() if isinstance(module, (Int8Linear, Fp16Linear)) else 0
                own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
                for t in [*own, *vars(module).values()]:
                    if isinstance(t, torch.Tensor) and id(t) not in seen and t.device.type != "meta":
                        seen.add(id(t))
                        total += t.numel() * t.element_size()
        return total

    @property
    def variant(self) -> str:
        """base, custom_voice or voice_design (see ModelConfig.variant)."""
        return self.config.variant

    @property
    def speakers(self) -> list[str]:
        """Preset speakers (CustomVoice models); empty for the others."""
        return self.config.speaker_names

    @torch.inference_mode()
    def preset_voice(self, speaker: str) -> VoicePrompt:
        """A CustomVoice preset speaker as a voice prompt: its codec embedding takes the speaker
        position, exactly where a Base model puts a cloned voice's embedding."""
        key = self.config.speaker_key(speaker)
        ids = torch.tensor([[self.config.talker.speakers[key]]], device=self.device)
        return VoicePrompt(speaker_embedding=self.talker.embed_codec(ids)[0, 0].float().cpu())

    # ------------------------------------------------------------------ voices
    @torch.inference_mode()
    def create_voice(
        self,
        audio: str | Path | bytes | tuple[np.ndarray, int],
        ref_text: str | None = None,
        x_vector_only: bool = False,
    ) -> VoicePrompt:
        """Compute a voice prompt from reference audio (any common format, any rate, mono or stereo).

        With ``ref_text`` (ICL mode) the reference codes are kept and the model continues the
        reference; with ``x_vector_only`` only the speaker embedding is used (lower quality).
        """
        if self.weights.speaker_encoder is None:
            raise ValueError(
                f"this is a {self._variant_name()} model: it cannot clone voices; load a Base model "
                "(Qwen/Qwen3-TTS-12Hz-0.6B-Base or -1.7B-Base) to clone"
            )
        if not x_vector_only and not (ref_text and ref_text.strip()):
            raise ValueError("a transcript of the reference audio is required (or use x-vector-only mode)")
        if isinstance(audio, tuple):
            wav, sr = np.asarray(audio[0], dtype=np.float32), int(audio[1])
            if wav.ndim == 2:  # (samples, channels), as soundfile returns it
                wav = wav.mean(axis=-1)
            wav = resample(wav, sr, SAMPLE_RATE) if sr != SAMPLE_RATE else wav
        else:
            wav, _ = load_audio(audio, target_sr=SAMPLE_RATE)
        if wav.size == 0 or not np.isfinite(wav).all():
            raise ValueError("the reference audio is empty or has invalid (NaN or infinite) samples")
        se_param = next(self.weights.speaker_encoder.parameters())
        embedding = extract_speaker_embedding(self.weights.speaker_encoder, wav).to(se_param.device)
        if not bool(torch.isfinite(embedding).all()):
            # Samples far beyond full scale (a float file holding raw values, say) overflow the
            # speaker encoder's spectrum: the voice would be noise, so say why instead.
            peak = float(np.abs(wav).max())
            raise ValueError(
                f"the reference audio peaks at {peak:.3g}, far beyond full scale (1.0): no voice can be "
                "computed from it; normalise it to [-1, 1] first"
            )
        if x_vector_only:
            return VoicePrompt(speaker_embedding=embedding.float().cpu())
        codes = self.codec.encode(wav)
        return VoicePrompt(
            speaker_embedding=embedding.float().cpu(), ref_codes=codes.cpu(), ref_text=ref_text
        )

    # -------------------------------------------------------------- generation
    def default_options(self) -> GenerationOptions:
        d = self.defaults
        return GenerationOptions(
            talker=SamplingOptions(d.do_sample, d.temperature, d.top_k, d.top_p),
            subtalker=SamplingOptions(
                d.subtalker_dosample, d.subtalker_temperature, d.subtalker_top_k, d.subtalker_top_p
            ),
            repetition_penalty=d.repetition_penalty,
        )

    def frame_limit(self, text_tokens: int) -> int:
        """Default cap on frames for a text of ``text_tokens`` tokens (runaway guard)."""
        limit = FRAMES_BASE + FRAMES_PER_TOKEN * text_tokens
        return max(1, min(limit, self.defaults.max_new_tokens - 1))

    def default_max_frames(self, text: str) -> int:
        return self.frame_limit(self.tokenizer.text_token_count(self.tokenizer.target_ids(text)))

    def validate(self, req: Request) -> None:
        """Cheap checks of a request; raises ValueError with a message meant for users."""
        if req.feed is None and (not req.text or not req.text.strip()):
            raise ValueError("text is empty")
        if req.feed is not None and req.feed.closed and not req.feed.text.strip():
            raise ValueError("text is empty")
        for value, what in (
            (req.text, "the text"),
            (req.instruct, "the instruction"),
            (req.speaker, "the speaker"),
        ):
            if value is not None and (at := invalid_unicode_at(value)) is not None:
                raise ValueError(
                    f"{what} holds characters that are not valid Unicode at position {at} (was it UTF-8?)"
                )
        limit = req.options.max_frames if req.options is not None else None
        if limit is not None and limit > MAX_FRAMES:
            raise ValueError(
                f"max_frames is {limit}; at most {MAX_FRAMES} frames "
                f"({MAX_FRAMES * 0.08:g} s of audio) are allowed per request: split longer texts"
            )
        self.config.language_id(req.language)
        self._check_speaker(req)
        if req.voice is None:
            return
        dim = self.config.talker.decoder.hidden_size
        if req.voice.speaker_embedding.shape[0] != dim:
            raise ValueError(
                f"this voice was made with a different model (speaker embedding of size "
                f"{req.voice.speaker_embedding.shape[0]}, this model needs {dim})"
            )
        if not bool(torch.isfinite(req.voice.speaker_embedding).all()):
            raise ValueError("this voice's speaker embedding has invalid (NaN or infinite) values")
        codes = req.voice.ref_codes
        if codes is not None and (codes.shape[1] != self.config.talker.num_code_groups or codes.numel() == 0):
            raise ValueError("this voice's reference codes do not fit this model")
        # An id out of range failed deep in the worker (a bare IndexError from an embedding
        # lookup; the batcher kept the others going): a clear error at submit instead.
        if codes is not None and not (
            0 <= int(codes.min()) and int(codes.max()) < self.config.talker.codebook_size
        ):
            raise ValueError(
                f"this voice's reference codes are outside [0, {self.config.talker.codebook_size})"
            )

    def _variant_name(self) -> str:
        return {"base": "Base", "custom_voice": "CustomVoice", "voice_design": "VoiceDesign"}.get(
            self.variant, self.variant
        )

    def _check_speaker(self, req: Request) -> None:
        """Who speaks must be something this model can do; the error names the model needed."""
        variant, name = self.variant, self._variant_name()
        if req.instruct and req.instruct.strip() and not self.config.supports_instruct:
            needs = "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice or -1.7B-VoiceDesign"
            raise ValueError(f"instructions need {needs}; this {name} model takes none")
        if variant == "base":
            if req.speaker:
                raise ValueError(
                    "preset speakers need a CustomVoice model (Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice or "
                    "-1.7B-CustomVoice); this Base model speaks in cloned voices"
                )
            if req.voice is None:
                raise ValueError("a Base model needs a voice: clone one from a reference recording")
        elif variant == "custom_voice":
            if req.voice is not None:
                raise ValueError(
                    "cloned voices need a Base model (Qwen/Qwen3-TTS-12Hz-0.6B-Base or -1.7B-Base); "
                    f"this CustomVoice model speaks as one of: {', '.join(self.speakers)}"
                )
            if not req.speaker:
                raise ValueError(f"choose a speaker: {', '.join(self.speakers)}")
            self.config.speaker_key(req.speaker)
        elif req.voice is not None or req.speaker:
            raise ValueError(
                "a VoiceDesign model makes its voice from the instruction (a description of the voice); "
                "for cloned voices use a Base model, for preset speakers a CustomVoice model"
            )

    def text_ready(self, req: Request) -> bool:
        """Whether a request can start: always, unless its text is arriving and no word of it is
        final yet (then it waits in the queue, holding no row)."""
        return req.feed is None or req.feed.ready(self.tokenizer)

    def _sequence(self, req: Request) -> Sequence:
        self.validate(req)
        language_id = self.config.language_id(req.language)
        opts = req.options or self.default_options()
        closed = True
        if req.feed is None:
            target = self.tokenizer.target_ids(req.text)
        else:
            ids, closed = req.feed.take(self.tokenizer)
            if not ids:
                raise ValueError("text is empty")
            frame = self.tokenizer.target_ids("x")  # the framing around any text
            target = frame[:ROLE_TOKENS] + ids + frame[-TARGET_TAIL:]
        voice = req.voice
        if req.speaker:
            voice = self.preset_voice(req.speaker)
            dialect = self.config.talker.speaker_dialects.get(self.config.speaker_key(req.speaker))
            if dialect and req.language.strip().lower() in ("auto", "chinese"):  # as the official does
                language_id = self.config.talker.language_ids[dialect]
        ref_ids = None
        if voice is not None and voice.ref_codes is not None:
            ref_ids = self.tokenizer.reference_ids(voice.ref_text or "")
        instruct_ids = None
        if req.instruct and req.instruct.strip() and self.config.supports_instruct:
            instruct_ids = self.tokenizer.instruct_ids(req.instruct)
        non_streaming = req.non_streaming if req.non_streaming is not None else self.variant != "base"
        if non_streaming and ref_ids is not None:
            raise ValueError("the non-streaming layout is not available for voices cloned with a transcript")
        prompt = build_prompt(
            self.talker,
            self.config,
            target,
            language_id,
            voice,
            ref_ids,
            text_open=not closed,
            instruct_ids=instruct_ids,
            non_streaming=non_streaming,
        )
        tokens = self.tokenizer.text_token_count(target)
        max_frames = opts.max_frames or self.frame_limit(tokens)
        seed = opts.seed if opts.seed is not None else random.getrandbits(63)
        seq = Sequence(prompt=prompt, options=opts, max_frames=max_frames, seed=seed)
        if req.feed is not None:
            seq.feed, seq.text_closed, seq.text_tokens = req.feed, closed, tokens
        return seq

    @torch.inference_mode()
    def pump_text(self, seq: Sequence) -> bool:
        """Hand a request the text that became final since the last call (and the end of its
        text once closed); its frame limit grows with its text. Returns whether anything came."""
        if seq.feed is None or seq.text_closed:
            return False
        ids, closed = seq.feed.take(self.tokenizer)
        if not ids and not closed:
            return False
        dev = self.talker.codec_head.weight.device
        emb = self.talker.embed_text(torch.tensor([ids], dtype=torch.long, device=dev))[0]
        eos = None
        if closed:
            eos = self.talker.embed_text(torch.tensor([[self.config.tts_eos_id]], device=dev))[0, 0]
        self.runner.extend_text(seq, emb, eos)
        seq.text_tokens += len(ids)
        if seq.options.max_frames is None:
            seq.max_frames = max(seq.max_frames, min(self.frame_limit(seq.text_tokens), MAX_FRAMES))
            need = seq.position + seq.max_frames - seq.frames + 2
            runner = self.runner
            if runner.graphs is None:
                runner.reserve(max(runner.capacity[0], 1), need)
            elif need > runner.capacity[1]:  # fixed shapes: the limit is what the cache holds
                seq.max_frames -= need - runner.capacity[1]
        return True

    def stream_codes(self, requests: list[Request]) -> Iterator[tuple[int, torch.Tensor | None, str]]:
        """Run requests as one batch. Yields (request index, frame codes [N], "") as each frame is
        made, and (index, None, reason) when a request ends ("eos", "max_frames", "cancelled")."""
        seqs = [self._sequence(r) for r in requests]
        index = {id(s): i for i, s in enumerate(seqs)}
        self.runner.add_many(seqs)
        try:
            while self.runner.active:
                for out in self.runner.step():
                    yield index[id(out.sequence)], out.codes, out.sequence.reason
        finally:
            for s in seqs:  # the caller stopped early: free the rows
                self.runner.cancel(s)

    def generate_codes(self, requests: list[Request]) -> list[torch.Tensor]:
        """Codes [frames, N] per request (batched), without decoding audio. Parity tests compare these."""
        frames: list[list[torch.Tensor]] = [[] for _ in requests]
        for i, codes, _reason in self.stream_codes(requests):
            if codes is not None:
                frames[i].append(codes)
        n = self.config.talker.num_code_groups
        return [torch.stack(f) if f else torch.zeros(0, n, dtype=torch.long) for f in frames]

    def decode(self, codes: torch.Tensor, voice: VoicePrompt | None = None) -> np.ndarray:
        """Codes [frames, N] -> waveform. In ICL mode the reference codes are decoded first as
        left context and their share of the waveform is cut, as the official package does."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if voice is None or voice.ref_codes is None:
            return self.codec.decode(codes)
        full = torch.cat([voice.ref_codes.to(codes.device), codes])
        wav = self.codec.decode(full)

        return wav[official_reference_cut(voice.ref_frames, full.shape[0], wav.shape[0]) :]

    def audio_stream(self, voice: VoicePrompt | None = None) -> AudioStream:
        """A streaming codec decoder for one request. In ICL mode it starts warm: the reference
        codes were pushed as left context (their audio discarded), as the official one-shot
        decode does. The warm state is computed once per voice and forked for each request."""
        warm = self.warm_stream(voice)
        return self.codec.stream() if warm is None else warm.fork()

    def warm_stream(self, voice: VoicePrompt | None) -> AudioStream | None:
        """The voice's shared warm codec state (reference codes pushed; made now if missing, see
        :mod:`~utter.engine.warm`), or None when a request in that voice starts from a fresh
        one. Not to be pushed: fork it, or copy it out."""
        return self.warm.get(voice)

    def stream_audio(
        self, requests: list[Request], first_chunk: int = FIRST_CHUNK_FRAMES, chunk: int = CHUNK_FRAMES
    ) -> Iterator[tuple[int, torch.Tensor | None, np.ndarray | None, str]]:
        """Run requests as one batch, yielding (index, frame codes, PCM chunk or None, "") per frame
        and (index, None, last PCM chunk or None, reason) when a request ends. A request's chunks,
        concatenated, equal the one-shot decode of its codes (the reference part of an ICL voice
        cut at its exact frame boundary)."""
        chunkers = [PcmChunker(self.audio_stream(r.voice), first_chunk, chunk) for r in requests]
        for i, codes, reason in self.stream_codes(requests):
            pcm = chunkers[i].add(codes) if codes is not None else chunkers[i].flush()
            yield i, codes, pcm, reason

    def generate_batch(self, requests: list[Request]) -> list[Result]:
        """Speak several requests as one batch; results in request order. Built on the stream."""
        started = time.perf_counter()
        parts: list[list[np.ndarray]] = [[] for _ in requests]
        codes: list[list[torch.Tensor]] = [[] for _ in requests]
        done: list[tuple[str, float]] = [("", 0.0)] * len(requests)
        # Whole files need no early first chunk: every chunk at the size that decodes fastest.
        for i, frame, pcm, reason in self.stream_audio(requests, first_chunk=CHUNK_FRAMES):
            if pcm is not None:
                parts[i].append(pcm)
            if frame is not None:
                codes[i].append(frame)
            else:
                done[i] = (reason, time.perf_counter() - started)
        n = self.config.talker.num_code_groups
        return [
            Result(
                np.concatenate(p) if p else np.zeros(0, dtype=np.float32),
                torch.stack(c) if c else torch.zeros(0, n, dtype=torch.long),
                reason,
                seconds,
            )
            for p, c, (reason, seconds) in zip(parts, codes, done)
        ]

    def generate(
        self,
        text: str,
        voice: VoicePrompt | None = None,
        language: str = "Auto",
        options: GenerationOptions | None = None,
        speaker: str | None = None,
        instruct: str | None = None,
    ) -> np.ndarray:
        """Speak ``text`` in ``voice`` (Base), as ``speaker`` (CustomVoice) or in the voice
        ``instruct`` describes (VoiceDesign): mono float32 audio at 24 kHz."""
        req = Request(text, voice, language, options, speaker=speaker, instruct=instruct)
        return self.generate_batch([req])[0].audio
