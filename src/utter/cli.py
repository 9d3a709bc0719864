"""Command line: ``utter say``, ``utter voice``, ``utter transcribe``, ``utter download``, ``utter dev``.

Errors a user can fix (missing file, not audio, empty text, unknown language, offline hub id)
print one line and exit with status 2; the traceback is only shown with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-Base"
DEFAULT_ASR_MODEL = "openai/whisper-small"
log = logging.getLogger("utter")


class UsageError(Exception):
    """A problem with what the user asked for, reported as one line."""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="hub id or local checkpoint folder (default: %(default)s)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument(
        "--weight-mode",
        "--dtype",
        dest="weight_mode",
        default=None,
        choices=["float32", "bfloat16", "float16", "int8"],
        help="weight format (default: int8 on CPUs, bfloat16 on GPUs)",
    )
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for hub ids")


def _add_voice_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--ref", help="reference recording (wav, mp3, m4a, flac, ogg; any rate)", required=required
    )
    p.add_argument("--ref-text", help="transcript of the reference recording (ICL mode, best quality)")
    p.add_argument("--ref-text-file", help="file holding the transcript of the reference recording")
    p.add_argument(
        "--asr-model",
        default=DEFAULT_ASR_MODEL,
        help="Whisper hub id or folder that transcribes a reference given without --ref-text "
        "(default: %(default)s; 'none' to require --ref-text)",
    )
    p.add_argument(
        "--x-vector-only",
        action="store_true",
        help="clone from the speaker embedding only (no transcript; lower quality)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="utter", description="Voice cloning with Qwen3-TTS")
    parser.add_argument("--debug", action="store_true", help="verbose logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    say = sub.add_parser("say", help="speak a text in a cloned voice and write a WAV file")
    _add_model_args(say)
    _add_voice_args(say, required=False)
    say.add_argument("--voice", help="a voice file written by `utter voice` (instead of --ref)")
    say.add_argument("--speaker", help="a preset speaker of a CustomVoice model (Vivian, Ryan ...)")
    say.add_argument(
        "--instruct",
        help="how to speak (CustomVoice 1.7B: 'slowly, whispering'), or the voice itself (VoiceDesign)",
    )
    say.add_argument("--text", help="text to speak")
    say.add_argument("--text-file", help="file holding the text to speak")
    say.add_argument("--language", default="Auto", help="Auto or one of the 10 languages (default: Auto)")
    say.add_argument(
        "-o",
        "--output",
        required=True,
        help="output file, 24 kHz mono; its extension picks the format: .wav (also without one), "
        ".mp3, .flac, .opus/.ogg, .aac, .pcm (raw s16le); - writes WAV to stdout",
    )
    say.add_argument("--greedy", action="store_true", help="deterministic decoding (argmax)")
    say.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    say.add_argument("--temperature", type=float, default=None)
    say.add_argument("--top-k", type=int, default=None)
    say.add_argument("--top-p", type=float, default=None)
    say.add_argument("--repetition-penalty", type=float, default=None)
    say.add_argument("--subtalker-temperature", type=float, default=None, help="code predictor temperature")
    say.add_argument("--subtalker-top-k", type=int, default=None, help="code predictor top-k")
    say.add_argument("--subtalker-top-p", type=float, default=None, help="code predictor top-p")
    say.add_argument("--subtalker-greedy", action="store_true", help="argmax in the code predictor only")
    say.add_argument(
        "--max-frames", type=int, default=None, help="at most N frames of 1920 samples (80 ms) in all"
    )
    say.add_argument(
        "--split-chars",
        type=int,
        default=300,
        help="speak a longer text in parts cut at sentence ends (a CJK character counts 3; 0: whole)",
    )
    say.add_argument(
        "--parallel", type=int, default=4, help="parts of a long text spoken at once (default 4)"
    )

    voice = sub.add_parser("voice", help="compute a voice from a reference recording and save it")
    _add_model_args(voice)
    _add_voice_args(voice, required=True)
    voice.add_argument("-o", "--output", required=True, help="voice file to write (.safetensors)")

    design = sub.add_parser(
        "design", help="make a voice from a description (VoiceDesign), then keep it as a Base-model voice"
    )
    design.add_argument(
        "--model", default="Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign", help="the VoiceDesign model"
    )
    design.add_argument("--base-model", default=DEFAULT_MODEL, help="the Base model the voice is kept for")
    design.add_argument("--description", required=True, help="the voice: 'a warm, low female voice ...'")
    design.add_argument("--text", default=None, help="what the designed voice says in its clip")
    design.add_argument("--language", default="Auto")
    design.add_argument("--seed", type=int, default=None, help="another seed, another take of the voice")
    design.add_argument(
        "--clip", default=None, help="also keep the designed clip as this audio file (format by extension)"
    )
    design.add_argument(
        "-o", "--output", required=True, help="voice file to write (.safetensors), for --voice"
    )
    design.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    design.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for hub ids")

    tr = sub.add_parser("transcribe", help="print the words spoken in a recording (Whisper)")
    tr.add_argument("audio", help="recording (wav, mp3, m4a, flac, ogg; any rate)")
    tr.add_argument(
        "--asr-model", default=DEFAULT_ASR_MODEL, help="Whisper hub id or folder (default: %(default)s)"
    )
    tr.add_argument("--language", default=None, help="language name or code (default: detected)")
    tr.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    tr.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for hub ids")

    dl = sub.add_parser("download", help="fetch a model from the Hugging Face hub ahead of time")
    dl.add_argument(
        "model", help="hub id, e.g. Qwen/Qwen3-TTS-12Hz-0.6B-Base (or openai/whisper-small with --asr)"
    )
    dl.add_argument("--dir", default=None, help="download into this folder instead of the HF cache")
    dl.add_argument("--asr", action="store_true", help="the model is a Whisper transcription model")

    dev = sub.add_parser("dev", help="developer tools")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    tiny = dev_sub.add_parser("tiny-checkpoint", help="write a RANDOM checkpoint in the official layout")
    tiny.add_argument("dir", help="output folder")
    tiny.add_argument("--size", default="tiny", choices=["tiny", "tiny-wide", "0.6b", "1.7b"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--variant", default="base", choices=["base", "custom_voice", "voice_design"])
    tiny_asr = dev_sub.add_parser(
        "tiny-whisper", help="write a RANDOM Whisper checkpoint in the hub's layout"
    )
    tiny_asr.add_argument("dir", help="output folder")
    tiny_asr.add_argument("--seed", type=int, default=0)

    from .bench.commands import register as register_bench
    from .bench.drift import register as register_drift
    from .server.commands import register as register_client
    from .studio.commands import register as register_studio

    register_bench(sub)
    register_drift(sub)
    register_client(sub)
    register_studio(sub)
    return parser


def _read_text(value: str | None, file: str | None, what: str) -> str | None:
    if value is not None and file is not None:
        raise UsageError(f"give either --{what} or --{what}-file, not both")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise UsageError(f"{what} file not found: {file}")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"{what} file {file} is not UTF-8 text (byte {exc.start} cannot be read)"
            ) from None
    return value


def _load_engine(args: argparse.Namespace, max_batch: int = 1):
    from .engine.engine import Engine

    # One request at a time: max_batch=1 picks the fastest single-stream weight mode.
    return Engine.load(
        args.model,
        device=args.device,
        weight_mode=args.weight_mode,
        cache_dir=args.cache_dir,
        max_batch=max_batch,
    )


def _transcriber(model: str, device: str | None, cache_dir: str | None):
    from .asr import Transcriber, resolve_asr_model

    return Transcriber.load(resolve_asr_model(model, cache_dir), device=device, name=model)


def _make_voice(engine, args: argparse.Namespace):
    from .asr import AsrError
    from .audio import SAMPLE_RATE, load_audio

    ref_text = _read_text(args.ref_text, args.ref_text_file, "ref-text")
    if args.x_vector_only and ref_text:
        raise UsageError("--x-vector-only clones without a transcript; drop --ref-text")
    if not Path(args.ref).is_file():
        raise UsageError(f"reference audio not found: {args.ref}")
    if not args.x_vector_only and not (ref_text and ref_text.strip()):
        if args.asr_model.strip().lower() in ("", "none", "off"):
            raise UsageError("give the reference transcript with --ref-text (or use --x-vector-only)")
        wav, _ = load_audio(args.ref, target_sr=SAMPLE_RATE)
        try:
            heard = _transcriber(args.asr_model, args.device, args.cache_dir).transcribe(wav, SAMPLE_RATE)
        except AsrError as exc:
            raise UsageError(f"give --ref-text or --x-vector-only: {exc}") from exc
        if not heard.text:
            raise UsageError("no words were recognised in the reference; give --ref-text or --x-vector-only")
        log.info("reference transcript (%s): %s", heard.language_code, heard.text)
        return engine.create_voice((wav, SAMPLE_RATE), ref_text=heard.text)
    return engine.create_voice(args.ref, ref_text=ref_text, x_vector_only=args.x_vector_only)


def _options(engine, args: argparse.Namespace):
    from dataclasses import replace

    from .engine.sampling import GenerationOptions

    base = engine.default_options()
    talker, sub = base.talker, base.subtalker
    talker = replace(
        talker,
        do_sample=talker.do_sample and not args.greedy,
        temperature=args.temperature if args.temperature is not None else talker.temperature,
        top_k=args.top_k if args.top_k is not None else talker.top_k,
        top_p=args.top_p if args.top_p is not None else talker.top_p,
    )
    sub = replace(
        sub,
        do_sample=sub.do_sample and not (args.greedy or args.subtalker_greedy),
        temperature=args.subtalker_temperature if args.subtalker_temperature is not None else sub.temperature,
        top_k=args.subtalker_top_k if args.subtalker_top_k is not None else sub.top_k,
        top_p=args.subtalker_top_p if args.subtalker_top_p is not None else sub.top_p,
    )
    penalty = args.repetition_penalty if args.repetition_penalty is not None else base.repetition_penalty
    return GenerationOptions(talker, sub, penalty, seed=args.seed, max_frames=args.max_frames)


# Output file extension -> the audio format `utter say` writes (the service's formats).
OUTPUT_FORMATS = {"": "wav", ".wav": "wav", ".mp3": "mp3", ".flac": "flac", ".opus": "opus", ".ogg": "opus",
                  ".aac": "aac", ".pcm": "pcm"}  # fmt: skip


def output_format(path: str) -> str:
    """The format of an output file from its extension, and its folder made, before anything
    loads (a typo or an unwritable place would otherwise surface only after the generation)."""
    if path == "-":
        return "wav"
    out = Path(path)
    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        choices = ", ".join(k for k in OUTPUT_FORMATS if k)
        raise UsageError(f"cannot tell the audio format of {path} from its extension; use one of {choices}")
    _output_folder(out)
    return fmt


AUDIO_SUFFIXES = {".m4a", ".mp4", ".webm", ".wma", ".aiff", ".aif"}  # not written, but still audio


def voice_output(path: str) -> None:
    """Check a voice file's name and make its folder before anything loads: a voice is a
    safetensors file, and one written under an audio name (``-o me.wav``, meaning to hear it)
    would only puzzle every player that opens it."""
    out = Path(path)
    suffix = out.suffix.lower()  # a name without one is fine: any name holds a voice
    if path == "-" or (suffix and (suffix in OUTPUT_FORMATS or suffix in AUDIO_SUFFIXES)):
        raise UsageError(
            f"{path} names audio, but a voice is saved as a voice file: use a .safetensors name "
            "(then `utter say --voice FILE` speaks with it)"
        )
    _output_folder(out)


def _output_folder(out: Path) -> None:
    """Make the folder of an output file, or fail with one line, before anything loads."""
    path = str(out)
    if out.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder; give a file name")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: cannot make the folder {folder} ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {path}: the folder {folder} is not writable")


def cmd_say(args: argparse.Namespace) -> None:
    from .audio import write_file
    from .audio.encode import encode_audio
    from .engine.cpu.threads import call_in_own_thread
    from .engine.engine import Request
    from .engine.voice import VoicePrompt
    from .server.speech.longform import parts_of

    text = _read_text(args.text, args.text_file, "text")
    if text is None or not text.strip():
        raise UsageError("nothing to say: give a non-empty --text or --text-file")
    if args.voice is not None and args.ref is not None:
        raise UsageError(
            "give a reference recording with --ref (and --ref-text), or a saved --voice file, not both"
        )
    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError("--max-frames must be at least 1")
    if args.split_chars < 0 or args.parallel < 1:
        raise UsageError("--split-chars must be 0 or more and --parallel at least 1")
    fmt = output_format(args.output)
    parts = parts_of(text, args.split_chars)
    engine = _load_engine(args, max_batch=min(args.parallel, len(parts)))
    if args.language.strip().lower() not in {lang.lower() for lang in engine.languages}:
        raise UsageError(f"unknown language {args.language!r}; choose one of: {', '.join(engine.languages)}")
    voice = None
    if engine.variant == "base":
        if args.voice is None and args.ref is None:
            raise UsageError(
                "give a reference recording with --ref (and --ref-text), or a saved --voice file"
            )
        # In a thread that ends with it: the parts' batcher then has the only OpenMP team
        # (see engine/cpu/threads.py)
        voice = VoicePrompt.load(args.voice) if args.voice else call_in_own_thread(_make_voice, engine, args)
    elif args.voice is not None or args.ref is not None:
        raise UsageError(
            f"{args.model} is a {engine.variant} model: it cannot clone (--ref/--voice need a Base model); "
            + ("use --speaker" if engine.variant == "custom_voice" else "describe the voice with --instruct")
        )
    request = Request(
        text, voice, args.language, _options(engine, args), speaker=args.speaker, instruct=args.instruct
    )
    if engine.variant == "voice_design":  # each generation makes its voice afresh: no parts
        parts = [text]
    started = time.perf_counter()
    if len(parts) == 1:
        audio = engine.generate(
            text, voice, args.language, request.options, speaker=args.speaker, instruct=args.instruct
        )
    else:
        log.info("speaking %d characters in %d parts, up to %d at once", len(text), len(parts), args.parallel)
        audio = _say_in_parts(engine, request, parts, args.parallel)
    elapsed = time.perf_counter() - started
    data = encode_audio(audio, fmt, sr=engine.sample_rate)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_file(args.output, data)
    seconds = len(audio) / engine.sample_rate
    log.info(
        "wrote %s: %.2f s of audio in %.2f s (%.2fx real time)",
        args.output,
        seconds,
        elapsed,
        seconds / elapsed if elapsed else 0.0,
    )


def _say_in_parts(engine, request, parts: list[str], parallel: int):
    """A long text as the server speaks it (``server/speech/longform.py``): its parts with the same
    voice, options and seed, ``parallel`` at once, crossfaded; a frame limit for the whole text."""
    import asyncio

    from .engine.sched.batcher import Batcher
    from .server.speech.longform import part_requests, speak_parts

    with Batcher(engine, max_batch=parallel, max_queue=len(parts)) as batcher:
        requests = part_requests(request, parts)
        return asyncio.run(speak_parts(batcher, requests, parallel, request.options.max_frames))


def cmd_voice(args: argparse.Namespace) -> None:
    voice_output(args.output)
    engine = _load_engine(args)
    voice = _make_voice(engine, args)
    voice.save(args.output)
    mode = "x-vector only" if voice.x_vector_only else f"ICL, {voice.ref_frames} reference frames"
    log.info("wrote voice %s (%s)", args.output, mode)


def cmd_design(args: argparse.Namespace) -> None:
    """Design, then clone: the VoiceDesign model speaks a clip in the described voice; the Base
    model makes a voice of that clip and its text (ICL), so it stays the same for any text."""
    from dataclasses import replace

    from .audio import SAMPLE_RATE, write_file
    from .audio.encode import encode_audio
    from .engine.design import sample_text
    from .engine.engine import Engine

    if not args.description.strip():
        raise UsageError("describe the voice with --description")
    voice_output(args.output)
    if args.clip == "-":
        raise UsageError("--clip needs a file name (the clip's format comes from its extension)")
    clip_format = output_format(args.clip) if args.clip else None
    text = args.text or sample_text(args.language)
    designer = Engine.load(args.model, device=args.device, cache_dir=args.cache_dir, max_batch=1)
    if designer.variant != "voice_design":
        raise UsageError(f"{args.model} is a {designer.variant} model; --model must be a VoiceDesign model")
    options = replace(designer.default_options(), seed=args.seed)
    clip = designer.generate(text, None, args.language, options, instruct=args.description)
    del designer
    if args.clip:
        write_file(args.clip, encode_audio(clip, clip_format, sr=SAMPLE_RATE))
        log.info("wrote the designed clip %s (%.1f s)", args.clip, len(clip) / SAMPLE_RATE)
    base = Engine.load(args.base_model, device=args.device, cache_dir=args.cache_dir, max_batch=1)
    voice = base.create_voice((clip, SAMPLE_RATE), ref_text=text)
    voice.save(args.output)
    log.info(
        "wrote voice %s: use it with `utter say --model %s --voice %s`",
        args.output,
        args.base_model,
        args.output,
    )


def cmd_transcribe(args: argparse.Namespace) -> None:
    from .audio import load_audio

    if not Path(args.audio).is_file():
        raise UsageError(f"audio file not found: {args.audio}")
    wav, sr = load_audio(args.audio)
    heard = _transcriber(args.asr_model, args.device, args.cache_dir).transcribe(wav, sr, args.language)
    log.info("%.1f s of audio, language %s", heard.seconds, heard.language_code)
    print(heard.text)


def cmd_download(args: argparse.Namespace) -> None:
    from .engine.checkpoint import download_checkpoint

    if args.asr:
        from .asr.whisper import download_asr_model

        print(download_asr_model(args.model, args.dir))
        return
    path = download_checkpoint(args.model, args.dir)
    print(path)


def cmd_dev(args: argparse.Namespace) -> None:
    from .dev.tiny_checkpoint import write_tiny_checkpoint

    if args.dev_command == "tiny-checkpoint":
        path = write_tiny_checkpoint(args.dir, size=args.size, seed=args.seed, variant=args.variant)
        kind = f"{args.size} {args.variant}"
        print(f"wrote a RANDOM {kind} checkpoint to {path} (random weights make noise, not speech)")
    elif args.dev_command == "tiny-whisper":
        from .dev.tiny_whisper import write_tiny_whisper

        path = write_tiny_whisper(args.dir, seed=args.seed)
        print(f"wrote a RANDOM Whisper checkpoint to {path} (it transcribes gibberish)")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench.commands import cmd_bench as run

    run(args)


COMMANDS = {
    "say": cmd_say,
    "voice": cmd_voice,
    "transcribe": cmd_transcribe,
    "design": cmd_design,
    "download": cmd_download,
    "dev": cmd_dev,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.debug:
        for noisy in ("httpx", "huggingface_hub", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    from .asr import AsrError
    from .audio import AudioError
    from .engine.checkpoint import CheckpointError

    try:
        (COMMANDS.get(args.command) or args.func)(args)
    except (UsageError, AudioError, CheckpointError, AsrError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"utter: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
