"""The rest of the 12 Hz family: CustomVoice (preset speakers, instructions on 1.7B) and
VoiceDesign (a voice from a description), against the official package on tiny random
checkpoints of each variant: identical greedy codes and waveforms in float32; and a clear error,
naming the model needed, for whatever a model cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.official import Spy, import_qwen_tts
from utter.engine.engine import Engine, Request
from utter.engine.sampling import GenerationOptions

TEXTS = ["Hello world, this is a test.", "你好，世界！今天天气很好。", "Call 555-0199 at 3:45 p.m., ok?"]
LANGUAGES = ["English", "Chinese", "Auto"]
MAX_NEW = 14


@pytest.fixture(scope="module")
def custom_voice(tmp_path_factory) -> Path:
    from utter.dev.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("cv") / "cv", seed=3, variant="custom_voice")


@pytest.fixture(scope="module")
def voice_design(tmp_path_factory) -> Path:
    from utter.dev.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("vd") / "vd", seed=4, variant="voice_design")


def _check(ours: Engine, requests: list[Request], spy_codes, wavs) -> None:
    results = ours.generate_batch(requests)
    for res, codes, wav in zip(results, spy_codes, wavs):
        assert codes.shape[0] > 0
        assert torch.equal(res.codes, codes.cpu())
        np.testing.assert_allclose(ours.decode(res.codes), wav, atol=1e-4, rtol=0)
        np.testing.assert_allclose(res.audio, wav[len(wav) - len(res.audio) :], atol=1e-4, rtol=0)


def test_custom_voice_parity(custom_voice: Path) -> None:
    """Preset speakers (Eric speaks Chinese in the Sichuan dialect: his Chinese and Auto requests
    take the dialect's language id), with and without an instruction, in one batch."""
    qwen_tts = import_qwen_tts()
    official = qwen_tts.Qwen3TTSModel.from_pretrained(
        str(custom_voice), device_map="cpu", dtype=torch.float32
    )
    ours = Engine.load(str(custom_voice), device="cpu", dtype="float32")
    assert ours.variant == "custom_voice" and "Uncle_Fu" in ours.speakers and "Ono_Anna" in ours.speakers
    speakers = ["Vivian", "eric", "Eric"]
    instructs = ["Speak slowly and sadly.", "", "用愉快的语气说"]
    with Spy(official.model) as spy:
        wavs, _ = official.generate_custom_voice(
            text=TEXTS, language=LANGUAGES, speaker=speakers, instruct=instructs,
            do_sample=False, subtalker_dosample=False, max_new_tokens=MAX_NEW,
        )  # fmt: skip
    options = GenerationOptions.greedy(max_frames=MAX_NEW - 1)
    requests = [
        Request(t, None, lang, options, speaker=spk, instruct=ins)
        for t, lang, spk, ins in zip(TEXTS, LANGUAGES, speakers, instructs)
    ]
    _check(ours, requests, spy.codes, wavs)


def test_voice_design_parity(voice_design: Path) -> None:
    qwen_tts = import_qwen_tts()
    official = qwen_tts.Qwen3TTSModel.from_pretrained(
        str(voice_design), device_map="cpu", dtype=torch.float32
    )
    ours = Engine.load(str(voice_design), device="cpu", dtype="float32")
    assert ours.variant == "voice_design" and ours.speakers == []
    descriptions = [
        "A warm, low female voice with a slight British accent.",
        "",
        "一个年轻男性的声音，语速很快。",
    ]
    with Spy(official.model) as spy:
        wavs, _ = official.generate_voice_design(
            text=TEXTS, language=LANGUAGES, instruct=descriptions,
            do_sample=False, subtalker_dosample=False, max_new_tokens=MAX_NEW,
        )  # fmt: skip
    options = GenerationOptions.greedy(max_frames=MAX_NEW - 1)
    requests = [
        Request(t, None, lang, options, instruct=d) for t, lang, d in zip(TEXTS, LANGUAGES, descriptions)
    ]
    _check(ours, requests, spy.codes, wavs)


def test_what_a_model_cannot_do_names_the_model_it_needs(
    engine, custom_voice: Path, voice_design: Path, ref_wav: Path, tmp_path: Path
) -> None:
    voice = engine.create_voice(ref_wav, x_vector_only=True)
    with pytest.raises(ValueError, match="preset speakers need a CustomVoice model"):
        engine.validate(Request("Hi.", voice, speaker="Vivian"))
    with pytest.raises(ValueError, match="instructions need Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"):
        engine.validate(Request("Hi.", voice, instruct="whisper"))
    with pytest.raises(ValueError, match="needs a voice"):
        engine.validate(Request("Hi."))
    cv = Engine.load(str(custom_voice), device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="cannot clone voices; load a Base model"):
        cv.create_voice(ref_wav, x_vector_only=True)
    with pytest.raises(ValueError, match="cloned voices need a Base model"):
        cv.validate(Request("Hi.", voice))
    with pytest.raises(ValueError, match="unknown speaker 'Nobody'.*Vivian"):
        cv.validate(Request("Hi.", speaker="Nobody"))
    with pytest.raises(ValueError, match="choose a speaker"):
        cv.validate(Request("Hi."))
    vd = Engine.load(str(voice_design), device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="VoiceDesign model makes its voice from the instruction"):
        vd.validate(Request("Hi.", speaker="Vivian", instruct="warm"))
    # The 0.6B CustomVoice takes no instructions (the official package drops them silently).
    small = tmp_path / "cv-0b6"
    import shutil

    shutil.copytree(custom_voice, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "tts_model_size": "0b6"}))
    with pytest.raises(ValueError, match="instructions need"):
        Engine.load(str(small), device="cpu", dtype="float32").validate(
            Request("Hi.", speaker="Vivian", instruct="whisper")
        )


def test_base_non_streaming_layout_parity(tiny_checkpoint: Path, ref_wav: Path) -> None:
    """The official non-streaming layout (whole text in the prompt) on a Base model, x-vector voice."""
    qwen_tts = import_qwen_tts()
    official = qwen_tts.Qwen3TTSModel.from_pretrained(
        str(tiny_checkpoint), device_map="cpu", dtype=torch.float32
    )
    ours = Engine.load(str(tiny_checkpoint), device="cpu", dtype="float32")
    items = official.create_voice_clone_prompt(ref_audio=str(ref_wav), x_vector_only_mode=True)
    voice = ours.create_voice(ref_wav, x_vector_only=True)
    with Spy(official.model) as spy:
        wavs, _ = official.generate_voice_clone(
            text=TEXTS, language=LANGUAGES, voice_clone_prompt=items, non_streaming_mode=True,
            do_sample=False, subtalker_dosample=False, max_new_tokens=MAX_NEW,
        )  # fmt: skip
    options = GenerationOptions.greedy(max_frames=MAX_NEW - 1)
    requests = [Request(t, voice, lang, options, non_streaming=True) for t, lang in zip(TEXTS, LANGUAGES)]
    _check(ours, requests, spy.codes, wavs)
    icl = ours.create_voice(ref_wav, ref_text="Words of the reference.")
    with pytest.raises(ValueError, match="non-streaming layout is not available"):
        ours._sequence(Request("Hi.", icl, non_streaming=True))


def test_cli_speaker_instruct_and_design(
    custom_voice: Path, voice_design: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    import soundfile as sf

    from utter.cli import main
    from utter.engine.voice import VoicePrompt

    common = ["--device", "cpu", "--greedy", "--max-frames", "5", "--text", "Hello there."]
    out = tmp_path / "cv.wav"
    argv = ["say", "--model", str(custom_voice), "--speaker", "ryan", "--instruct", "calmly", "-o", str(out)]
    assert main([*argv, *common]) == 0
    assert sf.info(out).frames == 5 * 1920
    assert main(["say", "--model", str(custom_voice), "-o", str(out), *common]) == 2
    assert "choose a speaker" in capsys.readouterr().err
    assert main(["say", "--model", str(custom_voice), "--ref", str(out), "-o", str(out), *common]) == 2
    assert "cannot clone" in capsys.readouterr().err
    vd = tmp_path / "vd.wav"
    argv = ["say", "--model", str(voice_design), "--instruct", "a bright voice", "-o", str(vd), *common]
    assert main(argv) == 0 and sf.info(vd).frames == 5 * 1920
    base_speaker = ["say", "--model", str(tiny_checkpoint), "--ref", str(vd), "--ref-text", "Words."]
    assert main([*base_speaker, "--speaker", "Vivian", "-o", str(tmp_path / "x.wav"), *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "preset speakers need a CustomVoice model" in err

    # Design, then clone: the designed clip becomes a Base-model voice (ICL, the clip's words).
    voice_file, clip = tmp_path / "designed.safetensors", tmp_path / "designed.flac"
    argv = ["design", "--model", str(voice_design), "--base-model", str(tiny_checkpoint), "--device", "cpu"]
    argv += ["--description", "A warm, low voice.", "--seed", "3", "--clip", str(clip), "-o", str(voice_file)]
    assert main(argv) == 0
    assert sf.info(clip).format == "FLAC" and sf.info(clip).samplerate == 24000  # by its extension
    voice = VoicePrompt.load(voice_file)
    assert voice.ref_codes is not None and voice.ref_text.startswith("Today is a lovely day")
    said = tmp_path / "said.wav"
    assert (
        main(["say", "--model", str(tiny_checkpoint), "--voice", str(voice_file), "-o", str(said), *common])
        == 0
    )
    assert main(["design", "--model", str(tiny_checkpoint), "--description", "x", "-o", str(voice_file)]) == 2
    assert "must be a VoiceDesign model" in capsys.readouterr().err
