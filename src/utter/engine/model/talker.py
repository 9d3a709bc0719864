"""The talker (predicts codebook 0 of each 80 ms frame) and the code predictor (codebooks 1..N-1).

Module and parameter names mirror the official checkpoint under the ``talker.`` prefix, so
``model.safetensors`` loads by name. The decode loop itself lives in ``engine/sched/runner.py``; these
modules only hold weights and expose the few pure operations the loop needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TalkerConfig
from .layers import DecoderStack


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """An Embedding without its random init: every table is loaded from the checkpoint, and on the
    meta device (how the engine builds the model) ``reset_parameters`` of the text table alone
    costs about 0.8 s of start-up."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class ResizeMLP(nn.Module):
    """Projects text embeddings (text_hidden_size) into the talker width."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(d_in, d_hidden, bias=True)
        self.linear_fc2 = nn.Linear(d_hidden, d_out, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class TalkerModel(DecoderStack):
    """Talker decoder stack plus its codec (audio token) and text embeddings."""

    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__(cfg.decoder)
        self.codec_embedding = _embedding(cfg.decoder.vocab_size, cfg.decoder.hidden_size)
        self.text_embedding = _embedding(cfg.text_vocab_size, cfg.text_hidden_size)


class CodePredictorModel(DecoderStack):
    """Code predictor stack; embeddings for codebooks 1..N-1 live at the talker width."""

    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__(cfg.code_predictor)
        n = cfg.num_code_groups - 1
        self.codec_embedding = nn.ModuleList(
            _embedding(cfg.code_predictor.vocab_size, cfg.decoder.hidden_size) for _ in range(n)
        )


class CodePredictor(nn.Module):
    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__()
        cp = cfg.code_predictor
        self.model = CodePredictorModel(cfg)
        self.lm_head = nn.ModuleList(
            nn.Linear(cp.hidden_size, cp.vocab_size, bias=False) for _ in range(cfg.num_code_groups - 1)
        )
        # Only the 1.7B layout (talker wider than the predictor) has this projection.
        if cp.hidden_size != cfg.decoder.hidden_size:
            self.small_to_mtp_projection: nn.Module = nn.Linear(cfg.decoder.hidden_size, cp.hidden_size)
        else:
            self.small_to_mtp_projection = nn.Identity()


class Talker(nn.Module):
    def __init__(self, cfg: TalkerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.decoder
        self.model = TalkerModel(cfg)
        self.text_projection = ResizeMLP(cfg.text_hidden_size, cfg.text_hidden_size, d.hidden_size)
        self.codec_head = nn.Linear(d.hidden_size, d.vocab_size, bias=False)
        self.code_predictor = CodePredictor(cfg)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text token ids [..., S] -> talker-width embeddings [..., S, D]."""
        rows = self.model.text_embedding(ids)  # the table may be stored in another dtype
        return self.text_projection(rows.to(self.text_projection.linear_fc1.weight.dtype))

    def embed_codec(self, ids: torch.Tensor) -> torch.Tensor:
        """Codec ids (codebook 0 or control ids) [..., S] -> [..., S, D]."""
        return self.model.codec_embedding(ids)

    def embed_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the embeddings of all codebooks of frames: codes [..., N] -> [..., D].

        This sum is the talker's input for the next position (plus a text embedding).
        """
        parts = [self.model.codec_embedding(codes[..., 0])]
        parts += [emb(codes[..., i + 1]) for i, emb in enumerate(self.code_predictor.model.codec_embedding)]
        return torch.stack(parts, dim=-2).sum(-2)
