"""Greedy codes of our talker + code predictor equal the official model's, weights shared.

This isolates the decode loop from the text and speech tokenizers: prompts are given as ids and
codes directly. The end-to-end parity (real tokenizer, speech tokenizer, audio) is in
test_parity.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.official import import_qwen_tts
from utter.dev.tiny_checkpoint import _config
from utter.engine.config import ModelConfig
from utter.engine.model.talker import Talker
from utter.engine.prompt import build_prompt
from utter.engine.sampling import GenerationOptions
from utter.engine.sched.runner import Runner, Sequence
from utter.engine.voice import VoicePrompt

qwen_tts = import_qwen_tts()


def _models(size: str, seed: int = 0, eos_boost: float = 1.0):
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    raw = _config(size)
    off_cfg = Qwen3TTSConfig(**copy.deepcopy(raw))
    torch.manual_seed(seed)
    official = Qwen3TTSForConditionalGeneration(off_cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in official.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.1, generator=gen)
            else:
                p.normal_(0.0, 0.2, generator=gen)
        # A stronger end-of-speech row makes sequences stop at different frames.
        official.talker.codec_head.weight[raw["talker_config"]["codec_eos_token_id"]] *= eos_boost
    cfg = ModelConfig.from_dict(copy.deepcopy(raw))
    ours = Talker(cfg.talker).eval()
    ours.load_state_dict(official.talker.state_dict(), strict=True)
    return official, ours, cfg


def _frame(text: list[int]) -> list[int]:
    return [151644, 77091, 198, *text, 151645, 198, 151644, 77091, 198]


@pytest.mark.parametrize(
    ("size", "eos_boost", "max_new"), [("tiny", 1.0, 12), ("tiny-wide", 1.0, 12), ("tiny", 2.0, 30)]
)
@pytest.mark.parametrize("icl", [True, False])
def test_greedy_codes_match_official_batch(size: str, eos_boost: float, max_new: int, icl: bool) -> None:
    official, ours, cfg = _models(size, eos_boost=eos_boost)
    g = torch.Generator().manual_seed(1)
    d = cfg.talker.decoder.hidden_size
    texts = [[9707, 11, 1879, 0], [104100, 99489, 3837, 1234, 5678, 42, 13], [16, 17, 18]]
    languages = ["English", "Chinese", "Auto"]
    ref_text = [40, 1079, 264, 6623, 13]
    voices = []
    for i in range(len(texts)):
        spk = torch.randn(d, generator=g)
        codes = torch.randint(0, 2048, (6 + 3 * i, 16), generator=g) if icl else None
        voices.append(VoicePrompt(spk, codes, "ref" if icl else None))
    off_prompt = {
        "ref_code": [v.ref_codes for v in voices],
        "ref_spk_embedding": [v.speaker_embedding for v in voices],
        "x_vector_only_mode": [not icl] * len(voices),
        "icl_mode": [icl] * len(voices),
    }
    ref_ids = [torch.tensor([[151644, 77091, 198, *ref_text, 151645, 198]]) for _ in voices] if icl else None
    with torch.no_grad():
        expected, _ = official.generate(
            input_ids=[torch.tensor([_frame(t)]) for t in texts],
            ref_ids=ref_ids,
            voice_clone_prompt=off_prompt,
            languages=languages,
            non_streaming_mode=False,
            max_new_tokens=max_new,
            do_sample=False,
            subtalker_dosample=False,
        )
    runner = Runner(ours, cfg)
    seqs = []
    for t, lang, v in zip(texts, languages, voices):
        prompt = build_prompt(ours, cfg, _frame(t), cfg.language_id(lang), v, ref_text if icl else None)
        seqs.append(Sequence(prompt, GenerationOptions.greedy(), max_frames=max_new - 1))
        runner.add(seqs[-1])
    got: dict[int, list[torch.Tensor]] = {id(s): [] for s in seqs}
    while runner.active:
        for out in runner.step():
            if out.codes is not None:
                got[id(out.sequence)].append(out.codes)
    for s, exp in zip(seqs, expected):
        frames = torch.stack(got[id(s)]) if got[id(s)] else torch.zeros(0, 16, dtype=torch.long)
        assert frames.shape == exp.shape
        assert torch.equal(frames, exp)
    lengths = [e.shape[0] for e in expected]
    if eos_boost > 1:  # the batch really mixed early and late finishers
        assert min(lengths) < max(lengths) or max(lengths) < max_new - 1
