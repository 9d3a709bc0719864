"""Engine behaviour beyond parity: limits, voices on disk, batching invariance, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REF_TEXT, speechlike
from utter.audio import AudioError
from utter.engine.engine import Request
from utter.engine.sampling import GenerationOptions, SamplingOptions
from utter.engine.voice import VoicePrompt


@pytest.fixture(scope="module")
def voice(engine, ref_wav: Path) -> VoicePrompt:
    return engine.create_voice(ref_wav, ref_text=REF_TEXT)


def test_default_frame_limit_stops_runaway_generation(engine, voice) -> None:
    """Random weights never say end-of-speech; the default limit derived from the text stops them."""
    text = "A short sentence."
    codes = engine.generate_codes([Request(text, voice, "English", GenerationOptions.greedy())])[0]
    assert codes.shape[0] == engine.default_max_frames(text)
    assert engine.default_max_frames(text * 10) > engine.default_max_frames(text)


def test_max_frames_caps_audio_length(engine, voice) -> None:
    audio = engine.generate("Hello.", voice, "English", GenerationOptions.greedy(max_frames=4))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) <= 4 * 1920 and len(audio) > 0


def test_voice_prompt_save_load_round_trip(engine, voice, tmp_path: Path) -> None:
    path = tmp_path / "voices" / "v.safetensors"
    voice.save(path)
    loaded = VoicePrompt.load(path)
    assert torch.equal(loaded.speaker_embedding, voice.speaker_embedding)
    assert torch.equal(loaded.ref_codes, voice.ref_codes) and loaded.ref_text == REF_TEXT
    opts = GenerationOptions.greedy(max_frames=5)
    a = engine.generate_codes([Request("Same.", voice, "Auto", opts)])[0]
    b = engine.generate_codes([Request("Same.", loaded, "Auto", opts)])[0]
    assert torch.equal(a, b)
    assert list(path.parent.iterdir()) == [path]  # atomic write left no temporary file


def test_not_a_voice_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="not a voice prompt"):
        VoicePrompt.load(bad)


def test_sampled_output_is_seeded_and_independent_of_batch(engine, voice) -> None:
    sample = SamplingOptions(do_sample=True, temperature=0.9, top_k=50, top_p=0.9)
    opts = GenerationOptions(talker=sample, subtalker=sample, seed=11, max_frames=6)
    alone = engine.generate_codes([Request("Seeded text.", voice, "English", opts)])[0]
    again = engine.generate_codes([Request("Seeded text.", voice, "English", opts)])[0]
    other = GenerationOptions(talker=sample, subtalker=sample, seed=12, max_frames=9)
    batch = engine.generate_codes(
        [
            Request("Other words here.", voice, "Chinese", other),
            Request("Seeded text.", voice, "English", opts),
        ]
    )
    assert torch.equal(alone, again)
    assert torch.equal(alone, batch[1])
    different = GenerationOptions(talker=sample, subtalker=sample, seed=99, max_frames=6)
    assert not torch.equal(
        alone, engine.generate_codes([Request("Seeded text.", voice, "English", different)])[0]
    )


def test_greedy_in_batch_equals_alone(engine, voice, ref_wav: Path) -> None:
    xvec = engine.create_voice(ref_wav, x_vector_only=True)
    reqs = [
        Request("First request.", voice, "English", GenerationOptions.greedy(max_frames=7)),
        Request("第二个请求。", xvec, "Chinese", GenerationOptions.greedy(max_frames=3)),
        Request("Third, and longer than the others.", voice, "Auto", GenerationOptions.greedy(max_frames=9)),
    ]
    together = engine.generate_codes(reqs)
    for req, codes in zip(reqs, together):
        assert torch.equal(codes, engine.generate_codes([req])[0])


def test_stopping_a_stream_frees_its_rows(engine, voice) -> None:
    stream = engine.stream_codes([Request("Long text " * 5, voice, "English", GenerationOptions.greedy())])
    next(stream)
    stream.close()
    assert engine.runner.active == 0


@pytest.mark.parametrize(
    ("text", "language", "match"),
    [("", "English", "empty"), ("   ", "English", "empty"), ("hi", "Klingon", "unknown language")],
)
def test_bad_requests(engine, voice, text: str, language: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        engine.generate(text, voice, language)


def test_voice_needs_transcript_or_x_vector_mode(engine, ref_wav: Path) -> None:
    with pytest.raises(ValueError, match="transcript"):
        engine.create_voice(ref_wav)


def test_a_reference_no_voice_can_come_from_is_refused(engine) -> None:
    """NaN samples, or samples so far past full scale that the speaker encoder's spectrum
    overflows, give a clear error rather than a voice of NaNs (which would speak noise)."""
    wav = speechlike(1.5, 24000)
    with pytest.raises(ValueError, match="invalid"):
        engine.create_voice((np.where(np.arange(wav.size) == 9, np.nan, wav), 24000), ref_text="words")
    with pytest.raises(ValueError, match="far beyond full scale"):
        engine.create_voice((wav * 1e30, 24000), ref_text="words")
    loud = engine.create_voice((wav * 30, 24000), ref_text="words")  # loud but usable: kept
    assert torch.isfinite(loud.speaker_embedding).all()


def test_voice_from_other_model_is_refused(engine) -> None:
    alien = VoicePrompt(torch.zeros(7))
    with pytest.raises(ValueError, match="different model"):
        engine.generate("hi", alien)


def test_a_crafted_voice_is_refused_before_it_reaches_a_batch(engine, voice) -> None:
    """A voice built in Python (or a damaged file) with codes out of range failed in the worker
    with a bare IndexError; NaN embeddings would speak noise. Both are refused at submit."""
    size = engine.config.talker.codebook_size
    for bad_code, words in [(size, "outside"), (-3, "outside")]:
        codes = voice.ref_codes.clone()
        codes[1, 2] = bad_code
        crafted = VoicePrompt(voice.speaker_embedding, codes, voice.ref_text)
        with pytest.raises(ValueError, match=words):
            engine.validate(Request("hi", crafted, "English"))
    nan = VoicePrompt(torch.full_like(voice.speaker_embedding, float("nan")), voice.ref_codes, voice.ref_text)
    with pytest.raises(ValueError, match="NaN"):
        engine.validate(Request("hi", nan, "English"))


def test_reference_formats(engine, tmp_path: Path) -> None:
    import soundfile as sf

    wav = speechlike(1.5, 16000, channels=2)
    for ext in ("flac", "ogg"):
        path = tmp_path / f"r.{ext}"
        sf.write(path, wav, 16000)
        v = engine.create_voice(path, ref_text="words")
        assert v.ref_codes.shape[1] == 16 and v.ref_frames > 0
    with pytest.raises(AudioError):
        engine.create_voice(b"definitely not audio", ref_text="x")


def test_ignore_eos_runs_to_max_frames(engine, voice) -> None:
    """Benchmarks disable end-of-speech so every run makes the same number of frames."""
    import dataclasses

    eos = engine.config.talker.codec_eos_id
    weight = engine.talker.codec_head.weight
    saved = weight[eos].clone()
    try:
        with torch.no_grad():
            weight[eos] *= 4  # a model that wants to stop early
        greedy = GenerationOptions.greedy(max_frames=11)
        stops = engine.generate_codes([Request("Benchmark.", voice, "English", greedy)])[0]
        opts = dataclasses.replace(greedy, ignore_eos=True)
        codes = engine.generate_codes([Request("Benchmark.", voice, "English", opts)])[0]
    finally:
        with torch.no_grad():
            weight[eos] = saved
    assert stops.shape[0] < 11
    assert codes.shape[0] == 11


def test_voice_prefix_cache_reuses_the_reference_prefill(engine, voice) -> None:
    """The second request in a stored voice reuses the voice-only prefill and gives the same codes."""
    from utter.engine.sched.runner import Runner

    req = Request("Prefix cache check.", voice, "German", GenerationOptions.greedy(max_frames=6))
    fresh = Runner(engine.talker, engine.config)
    saved, engine.runner = engine.runner, fresh
    try:
        first = engine.generate_codes([req])[0]
        assert fresh.prefix_hits == 0 and len(fresh.prefix_cache) == 1
        ((k, _v),) = fresh.prefix_cache.values()
        prompt = engine._sequence(req).prompt
        assert k.shape[3] == prompt.prefix_len > len(engine.tokenizer.reference_ids(REF_TEXT))
        second = engine.generate_codes([req])[0]
        assert fresh.prefix_hits == 1
        other_language = engine.generate_codes([Request(req.text, voice, "English", req.options)])[0]
        assert fresh.prefix_hits == 1 and len(fresh.prefix_cache) == 2
    finally:
        engine.runner = saved
    assert torch.equal(first, second)
    assert other_language.shape[0] == 6
