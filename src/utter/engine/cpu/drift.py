"""How far a weight mode moves the logits from float32 (``utter drift``, ``tests/test_quant.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Drift:
    """How far a candidate's logits move from a reference's on the same inputs.

    Cosines are per logit row (mean and worst); top-1 is the share of rows whose argmax agrees.
    The talker's inputs run as one prefill (``talker_*``) and one position per call, as decode
    steps run (``talker_step_*``): engines may multiply the two kinds of call with different
    kernels (native int8 engines prefill with int8 inputs and decode with float32 ones).
    """

    talker_cosine: float
    talker_cosine_min: float
    talker_top1: float
    predictor_cosine: float
    predictor_cosine_min: float
    predictor_top1: float
    talker_step_cosine: float
    talker_step_top1: float


def _compare(ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float, float]:
    ref, cand = ref.float().flatten(0, -2), cand.float().flatten(0, -2)  # [rows, V]
    cos = F.cosine_similarity(ref, cand, dim=-1)
    top1 = (ref.argmax(-1) == cand.argmax(-1)).float().mean()
    return cos.mean().item(), cos.min().item(), top1.item()


def _talker_logits(talker: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Talker over input embeddings x [B, S, D] from position 0: logits [B, S, V], hidden [B, S, D]."""
    from ..model.layers import new_cache  # local import: no model import at module load

    dtype, device = talker.codec_head.weight.dtype, talker.codec_head.weight.device
    b, s, _ = x.shape
    cache = new_cache(talker.model.cfg, b, s, device, dtype)
    hidden = talker.model.run(x.to(dtype), cache, 0, kv_len=s)
    return talker.codec_head(hidden), hidden


def _talker_step_logits(talker: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Talker over x [B, S, D] one position per call (as decode steps run) -> logits [B, S, V]."""
    from ..model.layers import new_cache

    dtype, device = talker.codec_head.weight.dtype, talker.codec_head.weight.device
    b, s, _ = x.shape
    cache = new_cache(talker.model.cfg, b, s, device, dtype)
    x = x.to(dtype)
    positions = torch.zeros(b, 1, dtype=torch.long, device=device)
    hidden = [talker.model.run(x[:, p : p + 1], cache, positions + p, kv_len=p + 1) for p in range(s)]
    return talker.codec_head(torch.cat(hidden, dim=1))


def _predictor_logits(talker: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Code predictor over x [B, G, D] (talker hidden, then one embedding per codebook) -> [B, G-1, V]."""
    from ..model.layers import new_cache

    dtype, device = talker.codec_head.weight.dtype, talker.codec_head.weight.device
    cp = talker.code_predictor
    b, g, _ = x.shape
    cache = new_cache(cp.model.cfg, b, g, device, dtype)
    h = cp.small_to_mtp_projection(x.to(dtype))
    out = cp.model.run(h, cache, 0, kv_len=g)
    # Head j predicts codebook j+1 from the position holding codebook j (position j+1), as in decoding.
    return torch.stack([head(out[:, j + 1]) for j, head in enumerate(cp.lm_head)], dim=1)


@torch.inference_mode()
def logit_drift(
    reference: nn.Module, candidate: nn.Module, batch: int = 2, length: int = 16, seed: int = 0
) -> Drift:
    """Compare talker and code-predictor logits of two talkers on the same random inputs.

    Inputs are the reference's own embeddings of random text and codec ids, so they have the
    scale the model sees, and both stacks run them through all layers with causal attention
    (drift accumulates as in decoding). The code predictor's input is the reference talker's
    last hidden state followed by embeddings of random codes, one position per codebook.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = reference.cfg
    device = reference.codec_head.weight.device
    codebook = cfg.code_predictor.vocab_size

    def ids(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=gen).to(device)

    text = reference.embed_text(ids(cfg.text_vocab_size, batch, length))
    talker_in = reference.embed_codec(ids(codebook, batch, length)) + text  # [B, S, D]
    ref_talker, hidden = _talker_logits(reference, talker_in)
    codes = ids(codebook, batch, cfg.num_code_groups - 1)  # codebooks 0..G-2 feed the predictor
    embeds = [reference.embed_codec(codes[:, :1])]
    embeds += [
        emb(codes[:, j + 1 : j + 2])
        for j, emb in enumerate(reference.code_predictor.model.codec_embedding[:-1])
    ]
    cp_in = torch.cat([hidden[:, -1:], *embeds], dim=1)  # [B, G, D]
    t = _compare(ref_talker, _talker_logits(candidate, talker_in)[0])
    p = _compare(_predictor_logits(reference, cp_in), _predictor_logits(candidate, cp_in))
    steps = _compare(ref_talker, _talker_step_logits(candidate, talker_in))
    return Drift(t[0], t[1], t[2], p[0], p[1], p[2], steps[0], steps[2])
