"""The command line on a tiny checkpoint: it writes audio, and every user error is one clear line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REF_TEXT
from utter.cli import main


def _say(ckpt: Path, ref: Path, out: Path, *extra: str) -> list[str]:
    return ["say", "--model", str(ckpt), "--ref", str(ref), "-o", str(out), "--device", "cpu", *extra]


def test_say_writes_24k_mono_wav(tiny_checkpoint: Path, ref_wav: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    code = main(
        _say(
            tiny_checkpoint,
            ref_wav,
            out,
            "--ref-text",
            REF_TEXT,
            "--text",
            "Hello there.",
            "--language",
            "English",
            "--seed",
            "3",
            "--max-frames",
            "5",
        )
    )
    assert code == 0
    info = sf.info(out)
    assert info.samplerate == 24000 and info.channels == 1 and info.subtype == "PCM_16"
    assert 0 < info.frames <= 5 * 1920


def test_say_writes_the_format_its_output_names(
    tiny_checkpoint: Path, ref_wav: Path, tmp_path: Path, capsysbinary
) -> None:
    """The extension picks the format (the service's encoders); a name it cannot place or a
    folder it cannot make fail before the model loads; ``-o -`` writes the WAV to stdout."""
    import av

    args = ["--ref-text", REF_TEXT, "--text", "Hello there.", "--seed", "3", "--max-frames", "5"]
    wav = tmp_path / "new" / "out"  # no extension: WAV; the folder is made
    assert main(_say(tiny_checkpoint, ref_wav, wav, *args)) == 0
    want = sf.read(wav, dtype="float32")[0]
    for name, codec in [("out.mp3", "mp3"), ("out.FLAC", "flac"), ("out.ogg", "opus"), ("out.aac", "aac")]:
        assert main(_say(tiny_checkpoint, ref_wav, tmp_path / name, *args)) == 0
        with av.open(str(tmp_path / name)) as f:
            stream = f.streams.audio[0]
            assert stream.codec_context.name.startswith(codec) and stream.channels == 1
    assert np.array_equal(sf.read(tmp_path / "out.FLAC", dtype="float32")[0], want)  # lossless
    pcm = tmp_path / "out.pcm"
    assert main(_say(tiny_checkpoint, ref_wav, pcm, *args)) == 0
    assert pcm.read_bytes() == wav.read_bytes()[44:]
    capsysbinary.readouterr()
    assert main(_say(tiny_checkpoint, ref_wav, "-", *args)) == 0
    assert capsysbinary.readouterr().out == wav.read_bytes()
    (tmp_path / "a-file").write_text("")
    for bad, words in [
        ("out.xyz", "cannot tell the audio format"),
        ("a-file/out.wav", "cannot make the folder"),
    ]:
        assert main(_say("/no/such/model", ref_wav, tmp_path / bad, *args)) == 2  # before the model
        assert words in capsysbinary.readouterr().err.decode()


def test_a_voice_file_under_an_audio_name_fails_before_loading(ref_wav: Path, tmp_path: Path, capsys) -> None:
    """``utter voice -o me.wav`` (meaning to hear it) would write a safetensors file no player
    opens: refused with what to do, before the model loads (the model here does not exist)."""
    (tmp_path / "a-file").write_text("")
    for name, words in [
        ("me.wav", "use a .safetensors name"),
        ("me.M4A", "use a .safetensors name"),
        ("-", "use a .safetensors name"),
        ("a-file/me.safetensors", "cannot make the folder"),
    ]:
        out = name if name == "-" else str(tmp_path / name)
        argv = ["voice", "--model", "/no/such/model", "--ref", str(ref_wav), "--ref-text", "x", "-o", out]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    for name in ("me", "me.voice"):  # any other name holds a voice: on to the (missing) model
        argv = ["voice", "--model", "/no/such/model", "--ref", str(ref_wav), "--ref-text", "x"]
        assert main([*argv, "-o", str(tmp_path / name)]) == 2
        assert "names audio" not in capsys.readouterr().err
    argv = ["design", "--model", "/no/such/model", "--description", "warm", "-o", str(tmp_path / "v.wav")]
    assert main(argv) == 2 and "use a .safetensors name" in capsys.readouterr().err
    argv[-1] = str(tmp_path / "v.safetensors")
    assert main([*argv, "--clip", str(tmp_path / "clip.xyz")]) == 2
    assert "cannot tell the audio format" in capsys.readouterr().err


def test_say_greedy_is_deterministic_and_voice_file_round_trips(
    tiny_checkpoint: Path, ref_wav: Path, tmp_path: Path
) -> None:
    voice = tmp_path / "v.safetensors"
    assert (
        main(
            [
                "voice",
                "--model",
                str(tiny_checkpoint),
                "--ref",
                str(ref_wav),
                "--ref-text",
                REF_TEXT,
                "-o",
                str(voice),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    common = ["--text", "Same text twice.", "--greedy", "--max-frames", "6", "--device", "cpu"]
    assert main(["say", "--model", str(tiny_checkpoint), "--voice", str(voice), "-o", str(a), *common]) == 0
    assert main(_say(tiny_checkpoint, ref_wav, b, "--ref-text", REF_TEXT, *common)) == 0
    assert sf.read(a)[0].tolist() == sf.read(b)[0].tolist()


def test_say_speaks_a_long_text_in_parts(
    tiny_checkpoint: Path, ref_wav: Path, tmp_path: Path, caplog
) -> None:
    """As the server does: parts cut at sentence ends, several at once, crossfaded; the same
    audio however many run at once; a frame limit for the whole text."""
    text = tmp_path / "long.txt"
    text.write_text("One is here. Two is there. Three, now. Then four. And five ends it.", encoding="utf-8")
    common = ["--ref-text", REF_TEXT, "--text-file", str(text), "--seed", "4", "--split-chars", "16"]
    outs = {}
    for name, extra in {
        "p1": ["--parallel", "1"],
        "p3": ["--parallel", "3"],
        "whole": ["--split-chars", "0"],
    }.items():
        outs[name] = tmp_path / f"{name}.wav"
        with caplog.at_level(logging.INFO, logger="utter"):
            assert main(_say(tiny_checkpoint, ref_wav, outs[name], *common, *extra)) == 0
    assert "in 6 parts, up to 3 at once" in caplog.text
    audio = {name: sf.read(path, dtype="int16")[0] for name, path in outs.items()}
    assert np.array_equal(audio["p1"], audio["p3"])
    assert len(audio["p3"]) != len(audio["whole"])  # spoken whole, it is another audio
    limited = tmp_path / "limited.wav"
    assert main(_say(tiny_checkpoint, ref_wav, limited, *common, "--max-frames", "7")) == 0
    assert sf.info(limited).frames == 7 * 1920


def test_x_vector_only_and_text_file(tiny_checkpoint: Path, ref_wav: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("Read from a file.", encoding="utf-8")
    out = tmp_path / "x.wav"
    assert (
        main(
            _say(
                tiny_checkpoint,
                ref_wav,
                out,
                "--x-vector-only",
                "--text-file",
                str(text),
                "--max-frames",
                "3",
            )
        )
        == 0
    )
    assert sf.info(out).frames > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ref-text", REF_TEXT, "--text", "   "], "nothing to say"),
        (["--ref-text", REF_TEXT, "--text", "hi", "--language", "Klingon"], "unknown language 'Klingon'"),
        (["--text", "hi", "--asr-model", "none"], "--ref-text"),
        (["--text", "hi", "--asr-model", "/no/such/whisper"], "give --ref-text or --x-vector-only"),
        (["--ref-text", REF_TEXT, "--x-vector-only", "--text", "hi"], "drop --ref-text"),
        (["--ref-text", REF_TEXT, "--text", "hi", "--max-frames", "0"], "--max-frames"),
        (["--ref-text", REF_TEXT, "--text-file", "/nonexistent/t.txt"], "text file not found"),
        # Found by trying the command as a careless or hostile user would: each was a traceback.
        (["--ref-text", REF_TEXT, "--text", "hi", "--device", "tpu"], "unknown device 'tpu'"),
        (["--ref-text", REF_TEXT, "--text", "caf\udce9"], "not valid Unicode"),  # argv bytes not UTF-8
        (["--ref-text", REF_TEXT, "--text", "hi", "--seed", str(2**64)], "seed must be"),
    ],
)
def test_user_errors_are_one_line(
    tiny_checkpoint: Path, ref_wav: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "never.wav"
    assert main(_say(tiny_checkpoint, ref_wav, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_outputs_and_text_files_that_cannot_be_used_are_one_line(
    tiny_checkpoint: Path, ref_wav: Path, tmp_path: Path, capsys
) -> None:
    assert main(_say(tiny_checkpoint, ref_wav, tmp_path, "--ref-text", REF_TEXT, "--text", "hi")) == 2
    assert "it is a folder" in capsys.readouterr().err  # was a traceback, after the whole generation
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    out = tmp_path / "never.wav"
    assert main(_say(tiny_checkpoint, ref_wav, out, "--ref-text", REF_TEXT, "--text-file", str(latin))) == 2
    err = capsys.readouterr().err.strip()
    assert "is not UTF-8 text" in err and len(err.splitlines()) == 1 and not out.exists()


def test_missing_and_non_audio_reference(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never.wav"
    assert main(_say(tiny_checkpoint, tmp_path / "nope.wav", out, "--ref-text", "x", "--text", "hi")) == 2
    assert "not found" in capsys.readouterr().err
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio at all", encoding="utf-8")
    assert main(_say(tiny_checkpoint, bogus, out, "--ref-text", "x", "--text", "hi")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "audio" in err.lower()
    truncated = tmp_path / "cut.wav"
    sf.write(tmp_path / "full.wav", np.zeros(24000, dtype=np.float32), 24000)
    truncated.write_bytes((tmp_path / "full.wav").read_bytes()[:30])
    assert main(_say(tiny_checkpoint, truncated, out, "--ref-text", "x", "--text", "hi")) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_offline_hub_id_fails_with_clear_message(tmp_path: Path) -> None:
    """A hub id with no network: one line naming the model and how to use a local folder."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "utter.cli",
            "say",
            "--model",
            "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
            "--ref",
            "x.wav",
            "--ref-text",
            "x",
            "--text",
            "hi",
            "-o",
            str(tmp_path / "o.wav"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "Qwen/Qwen3-TTS-12Hz-0.6B-Base" in err[0] and "--model" in err[0]


def test_tiny_checkpoint_command(tmp_path: Path, capsys) -> None:
    assert main(["dev", "tiny-checkpoint", str(tmp_path / "c"), "--seed", "5"]) == 0
    assert "RANDOM" in capsys.readouterr().out
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "speech_tokenizer/config.json",
        "speech_tokenizer/model.safetensors",
        "speech_tokenizer/preprocessor_config.json",
    ):
        assert (tmp_path / "c" / name).is_file(), name


def test_transcribe_and_clone_without_a_transcript(
    tiny_checkpoint: Path, tiny_whisper: Path, ref_wav: Path, tmp_path: Path, capsys, caplog
) -> None:
    """`utter transcribe` prints what the (tiny, random) Whisper hears; `utter say` without
    --ref-text clones with that transcript, exactly as if it had been given."""
    from utter.asr import Transcriber, resolve_asr_model
    from utter.audio import SAMPLE_RATE, load_audio

    caplog.set_level(logging.INFO, logger="utter")
    wav, _ = load_audio(ref_wav, target_sr=SAMPLE_RATE)
    heard = Transcriber.load(resolve_asr_model(str(tiny_whisper)), device="cpu").transcribe(wav, SAMPLE_RATE)
    assert main(["transcribe", str(ref_wav), "--asr-model", str(tiny_whisper), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == heard.text
    assert main(["transcribe", str(tmp_path / "nope.wav"), "--asr-model", str(tiny_whisper)]) == 2
    assert "not found" in capsys.readouterr().err

    common = ["--text", "Hello there.", "--greedy", "--max-frames", "4"]
    auto, given = tmp_path / "auto.wav", tmp_path / "given.wav"
    assert main(_say(tiny_checkpoint, ref_wav, auto, "--asr-model", str(tiny_whisper), *common)) == 0
    assert main(_say(tiny_checkpoint, ref_wav, given, "--ref-text", heard.text, *common)) == 0
    assert np.array_equal(sf.read(auto)[0], sf.read(given)[0])
    assert heard.text in caplog.text


def test_dev_tiny_whisper(tmp_path: Path, capsys) -> None:
    assert main(["dev", "tiny-whisper", str(tmp_path / "w")]) == 0
    assert "RANDOM Whisper" in capsys.readouterr().out
    assert (tmp_path / "w" / "generation_config.json").is_file()


def _serve(checkpoint: Path, data: Path, api_only: bool, *extra: str) -> subprocess.CompletedProcess:
    """``utter serve`` in a process of its own, with no UTTER_ setting of this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UTTER_")}
    args = ["serve", "--model", str(checkpoint), "--data-dir", str(data), *extra]
    command = [sys.executable, "-m", "utter.cli", *args, *(["--api-only"] if api_only else [])]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("api_only", [False, True])
def test_serve_on_a_taken_port_says_so_before_loading_anything(tiny_checkpoint, tmp_path, api_only) -> None:
    """A port another server holds: one line naming the address and what to do, before the
    database, the model or uvicorn start (uvicorn alone fails only after the app started, with
    the model loading, and the process then died mid-load)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _serve(tiny_checkpoint, tmp_path, api_only, "--port", str(port))
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"utter: error: cannot listen on 127.0.0.1:{port}: Address already in use (another server there? "
        "choose --port)"
    )
    assert "loading" not in run.stderr and not (tmp_path / "utter.db").exists()  # nothing was set up


@pytest.mark.parametrize("api_only", [False, True])
def test_serve_with_an_unknown_device_says_so_at_start(tiny_checkpoint, tmp_path, api_only) -> None:
    """``--device tpu``: one line at start (was: a server up with its model failed, and torch's
    list of twenty device kinds in the log)."""
    run = _serve(tiny_checkpoint, tmp_path, api_only, "--device", "tpu")
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("utter: error: bad setting device") and "unknown device 'tpu'" in last
    assert not (tmp_path / "utter.db").exists()
