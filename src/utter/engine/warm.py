"""Warm codec states per voice: a cloned voice's reference codes, pushed through the codec once.

In ICL mode the official package decodes the reference codes as left context before a
request's own codes and cuts their audio off. Every layer of the codec decoder is causal, so a
request's streaming decoder can instead start from a state with the reference already pushed
(the same audio, to float rounding). That state depends only on the voice, so it is made once
per voice and forked for each request (:class:`WarmVoices`).

It is made in the decode loop, while every playing stream waits, so it must be cheap. Pushing
the whole reference cost about a decode of it (0.8 s for a 6 s reference on two CPU cores),
nearly all in the upsampling convs after the codec's transformer. Their state reaches back only
``post_reach_frames`` (11 for the 12 Hz codec); the transformer's reaches over everything. So all
but the last ``post_reach_frames`` of the reference go through the stages up to the transformer
only (``AudioStream.push_context``), and the last ones through the whole decoder: 0.13 s there,
whatever the reference's length.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch

from .streaming import CHUNK_FRAMES, AudioStream
from .voice import VoicePrompt

if TYPE_CHECKING:
    from .model.speech_tokenizer import SpeechTokenizer

WARM_STREAMS = 32  # voices whose warm codec state is kept (least recently used dropped first)


def warm_up(stream: AudioStream, codes: torch.Tensor) -> AudioStream:
    """Push reference ``codes`` [T, Q] into a fresh ``stream`` as left context (audio discarded):
    the stages after the transformer see only the frames their state can depend on."""
    context = max(0, codes.shape[0] - stream.decoder.post_reach_frames)
    stream.push_context(codes[:context])
    for start in range(context, codes.shape[0], CHUNK_FRAMES):  # the shapes later chunks reuse
        stream.push(codes[start : start + CHUNK_FRAMES])
    return stream


class WarmVoices:
    """The warm codec states of the voices used last, by voice key (an LRU of ``WARM_STREAMS``)."""

    def __init__(self, codec: SpeechTokenizer, size: int = WARM_STREAMS) -> None:
        self.codec = codec
        self.size = size
        self._states: OrderedDict[str, AudioStream] = OrderedDict()

    def get(self, voice: VoicePrompt | None) -> AudioStream | None:
        """The voice's warm state (made now if missing), or None for a voice without reference
        codes (its requests start from a fresh state). Shared: fork it, never push it."""
        if voice is None or voice.ref_codes is None:
            return None
        state = self._states.get(voice.key)
        if state is None:
            state = self._states[voice.key] = warm_up(self.codec.stream(), voice.ref_codes)
            while len(self._states) > self.size:
                self._states.popitem(last=False)
        self._states.move_to_end(voice.key)
        return state
