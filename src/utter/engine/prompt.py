"""Build the talker's input for one request: the prefill sequence and the trailing text.

The talker reads text and audio side by side: each position carries a text embedding plus a
codec embedding. After the prefill, each decode step adds the next "trailing" text embedding
to the sum of the previous frame's codebook embeddings (or the tts_pad embedding once the text
is used up). This mirrors the official package's default (text-streaming) layout exactly.

The speaker position holds a cloned voice's speaker embedding (Base models), a preset speaker's
codec embedding (CustomVoice: a voice prompt made by ``Engine.preset_voice``) or nothing at all
(VoiceDesign); an instruction ("speak slowly", a voice description) is a chat turn of its own,
``<|im_start|>user\n...<|im_end|>\n``, whose text embeddings come first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .config import ModelConfig
from .model.talker import Talker
from .text import ROLE_TOKENS, TARGET_TAIL
from .voice import VoicePrompt


@dataclass
class TalkerPrompt:
    """prefill: [S, D]; trailing: [T, D] text embeddings consumed one per decode step."""

    prefill: torch.Tensor
    trailing: torch.Tensor
    pad: torch.Tensor  # [D] used once ``trailing`` is exhausted
    prefix_len: int = 0  # leading prefill positions that depend only on the voice and language
    prefix_key: tuple | None = None  # identifies that prefix for the runner's prefix cache


def _ids(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


@torch.inference_mode()
def build_prompt(
    talker: Talker,
    cfg: ModelConfig,
    target_ids: list[int],
    language_id: int | None,
    voice: VoicePrompt | None,
    reference_ids: list[int] | None,
    text_open: bool = False,
    instruct_ids: list[int] | None = None,
    non_streaming: bool = False,
) -> TalkerPrompt:
    """Assemble the prefill embeddings for one request (see module docstring).

    ``text_open``: more text will follow (``textfeed.py``): the text's end-of-text embedding
    is left out (the runner appends it when the text is closed), and nothing stands in for
    text not yet received, so ``trailing`` may be empty.

    ``non_streaming``: the official "non-streaming" layout, the default of its CustomVoice and
    VoiceDesign calls: the whole text (and its end) is in the prefill over codec pad positions,
    and every decode step reads the pad embedding. Not for ICL voices or text still arriving."""
    tc = cfg.talker
    dev = talker.codec_head.weight.device
    dtype = talker.codec_head.weight.dtype
    ids = _ids(target_ids, dev)
    bos, eos, pad = talker.embed_text(_ids([cfg.tts_bos_id, cfg.tts_eos_id, cfg.tts_pad_id], dev)[None])[0]

    if language_id is None:
        control = [tc.codec_nothink_id, tc.codec_think_bos_id, tc.codec_think_eos_id]
    else:
        control = [tc.codec_think_id, tc.codec_think_bos_id, language_id, tc.codec_think_eos_id]
    codec = [talker.embed_codec(_ids(control, dev)[None])[0]]
    if voice is not None:  # VoiceDesign: no speaker position at all
        codec.append(voice.speaker_embedding.to(dev, dtype)[None])
    codec.append(talker.embed_codec(_ids([tc.codec_pad_id, tc.codec_bos_id], dev)[None])[0])
    codec_seq = torch.cat(codec)  # [n, D]: control ids, speaker, pad, bos

    role = talker.embed_text(ids[None, :ROLE_TOKENS])[0]
    text_side = torch.cat([pad.expand(codec_seq.shape[0] - 2, -1), bos[None]])
    head = torch.cat([role, text_side + codec_seq[:-1]])
    if instruct_ids:
        head = torch.cat([talker.embed_text(_ids(instruct_ids, dev)[None])[0], head])

    text = ids[ROLE_TOKENS:-TARGET_TAIL]
    if voice is not None and voice.ref_codes is not None:
        if reference_ids is None:
            raise ValueError("an ICL voice prompt needs its reference transcript ids")
        text_emb = talker.embed_text(torch.cat([_ids(reference_ids, dev), text])[None])[0]
        if not text_open:
            text_emb = torch.cat([text_emb, eos[None]])
        frames = talker.embed_frame(voice.ref_codes.to(dev))
        codec_emb = torch.cat([talker.embed_codec(_ids([tc.codec_bos_id], dev)[None])[0], frames])
        n_text, n_codec = text_emb.shape[0], codec_emb.shape[0]
        if n_text > n_codec:
            icl = text_emb[:n_codec] + codec_emb
            trailing = text_emb[n_codec:]
        else:
            icl = torch.cat([text_emb, pad.expand(n_codec - n_text, -1)]) + codec_emb
            trailing = pad[None][:0] if text_open else pad[None]
        prefill = torch.cat([head, icl])
        # Up to here the positions carry only the reference transcript and codes: voice-only.
        shared = head.shape[0] + min(len(reference_ids), n_codec)
    elif non_streaming and not text_open:
        n = text.shape[0] + 1  # the text and its end, each over a codec pad position
        over = torch.cat([talker.embed_text(text[None])[0], eos[None]])
        over = over + talker.embed_codec(_ids([tc.codec_pad_id] * n, dev)[None])[0]
        prefill = torch.cat([head, over, (pad + codec_seq[-1])[None]])
        trailing = pad[None]
        shared = head.shape[0]
    else:
        first = talker.embed_text(text[None, :1])[0] + codec_seq[-1:]
        prefill = torch.cat([head, first])
        trailing = talker.embed_text(text[None, 1:])[0]
        if not text_open:
            trailing = torch.cat([trailing, eos[None]])
        shared = head.shape[0]
    # The last position is always computed per request: its hidden state starts the decode.
    shared = min(shared, prefill.shape[0] - 1)
    instruct_key = hashlib.sha1(str(instruct_ids).encode()).hexdigest() if instruct_ids else None
    key = (voice.key if voice is not None else None, instruct_key, language_id, shared)
    return TalkerPrompt(prefill, trailing, pad, prefix_len=shared, prefix_key=key)
