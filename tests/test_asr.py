"""Transcription: the tiny random Whisper through the real loading code, against transformers run by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import speechlike
from utter.asr import AsrError, Transcriber, resolve_asr_model
from utter.asr.whisper import LANGUAGE_NAMES, SAMPLE_RATE, Transcript, whisper_code
from utter.audio.io import resample
from utter.engine.config import LANGUAGES


@pytest.fixture(scope="module")
def transcriber(tiny_whisper: Path) -> Transcriber:
    return Transcriber.load(resolve_asr_model(str(tiny_whisper)), device="cpu")


def _by_hand(folder: Path, wav16k: np.ndarray, language: str | None) -> tuple[str, str]:
    """What transformers' own Whisper classes make of ``wav16k``: (text, language code)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = processor(wav16k, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    with torch.no_grad():
        if language is None:
            start = torch.tensor([[model.generation_config.decoder_start_token_id]])
            logits = model(input_features=features, decoder_input_ids=start).logits[0, -1]
            lang_ids = model.generation_config.lang_to_id
            best = max(lang_ids, key=lambda token: float(logits[lang_ids[token]]))
            language = best.strip("<|>")
        ids = model.generate(features, language=language, task="transcribe")
    return processor.batch_decode(ids, skip_special_tokens=True)[0].strip(), language


def test_transcripts_equal_transformers_by_hand(transcriber: Transcriber, tiny_whisper: Path) -> None:
    for seed in range(3):
        wav24 = speechlike(3.0, 24000, seed=seed)
        made = transcriber.transcribe(wav24, 24000)
        wav16 = resample(wav24.astype(np.float32), 24000, SAMPLE_RATE)
        text, code = _by_hand(tiny_whisper, wav16, None)
        assert (made.text, made.language_code) == (text, code)
        assert made.text  # the tiny model is built to write letters, never an empty line
        assert made.seconds == pytest.approx(3.0)


def test_a_given_language_is_used(transcriber: Transcriber, tiny_whisper: Path) -> None:
    wav16 = speechlike(3.0, SAMPLE_RATE, seed=4)
    for given, code in (("German", "de"), ("ja", "ja"), ("english", "en")):
        made = transcriber.transcribe(wav16, SAMPLE_RATE, given)
        assert made.language_code == code
        assert made.text == _by_hand(tiny_whisper, wav16, code)[0]
    with pytest.raises(ValueError, match="cannot transcribe"):
        transcriber.transcribe(wav16, SAMPLE_RATE, "fi")  # a code this model's vocabulary lacks
    with pytest.raises(ValueError, match="Unknown language"):
        transcriber.transcribe(wav16, SAMPLE_RATE, "Klingon")


def test_long_audio_is_cut_into_windows_in_one_language(transcriber: Transcriber) -> None:
    wav16 = speechlike(45.0, SAMPLE_RATE, seed=5)
    whole = transcriber.transcribe(wav16, SAMPLE_RATE)
    first = transcriber.transcribe(wav16[: 30 * SAMPLE_RATE], SAMPLE_RATE)
    rest = transcriber.transcribe(wav16[30 * SAMPLE_RATE :], SAMPLE_RATE, whole.language_code)
    assert whole.language_code == first.language_code
    assert whole.text == f"{first.text} {rest.text}"


def test_language_names() -> None:
    assert Transcript("x", "zh", 1.0).language == "Chinese"
    assert Transcript("x", "nl", 1.0).language == "Auto"  # Whisper knows it, Qwen3-TTS does not
    assert set(LANGUAGE_NAMES.values()) == set(LANGUAGES) - {"Auto"}  # every language the model speaks
    assert whisper_code("Auto") is None and whisper_code("") is None
    assert whisper_code("Portuguese") == "pt" and whisper_code("PT") == "pt"


def test_resolution_errors_say_what_to_do(tmp_path: Path, tiny_whisper: Path, monkeypatch) -> None:
    with pytest.raises(AsrError, match="not a hub id"):
        resolve_asr_model(str(tmp_path / "nowhere" / "x" / "y"))
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text((tiny_whisper / "config.json").read_text())
    with pytest.raises(AsrError, match=r"incomplete: preprocessor_config.json, tokenizer_config.json, model"):
        resolve_asr_model(str(half))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(AsrError, match=r"Transcription is unavailable: .*offline mode.*UTTER_ASR_MODEL="):
        resolve_asr_model("openai/whisper-small", cache_dir=str(tmp_path / "cache"))


def test_a_model_without_languages_is_refused(tiny_whisper: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "english-only"
    shutil.copytree(tiny_whisper, copy)
    gen = (copy / "generation_config.json").read_text()
    (copy / "generation_config.json").write_text(gen.replace('"lang_to_id"', '"unused_lang_to_id"'))
    with pytest.raises(AsrError, match="not a multilingual Whisper"):
        Transcriber.load(copy, device="cpu")
