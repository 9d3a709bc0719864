"""Many streaming codec decodes in one call at fixed shapes: the server's codec on GPUs.

:class:`~utter.engine.streaming.AudioStream` keeps one stream's decoder state in tensors of its
own, so decoding the chunks of many streams together meant gathering every layer's state into
one batch and scattering it back: two small copies per layer per stream (thousands of kernels
for 64 streams), and shapes that change with the mix of streams, which a CUDA graph cannot take.

Here each stream owns a *slot* for its whole life: row ``slot`` of pooled state tensors (every
conv history, every transformer layer's keys and values, the frame position). A push of N
streams' chunks of T frames runs at a fixed batch bucket (1, 2, 4, ... slots): the slot numbers
are an input, the state is gathered by index inside the call and written back by index, and
padding rows use a scratch slot nobody owns. So the whole push (state gather, quantizer,
convolutions, transformer, upsampling, state scatter) is one function of fixed shapes, captured
once per (bucket, T) as a CUDA graph on GPUs and replayed after.

The transformer's keys keep a fixed ``window - 1`` frames per slot; frames before a stream's
start are zeros that the mask hides (key position < 0), so a fresh stream and one warmed with a
voice's reference codes run the same code. Each stream gets what pushing it alone through its
own :class:`AudioStream` gives, to float rounding (tested).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .cuda.graphs import buckets, capture
from .model.codec_decoder import CodecDecoder
from .streaming import AudioStream, StreamingDecoder, check_codes

logger = logging.getLogger(__name__)


class SlotsFullError(RuntimeError):
    """Every slot is taken (the caller admits more streams than it made slots for)."""


class CodecSlots:
    """Streaming codec state of up to ``slots`` streams, decoded together.

    ``open`` a slot per stream (fresh, or warm from a voice's :class:`AudioStream`), ``push``
    the chunks of any set of open slots (one chunk length per call), ``close`` when the stream
    ends. ``graph_frames``: the chunk lengths replayed from CUDA graphs when ``capture``
    (others run the same code eagerly: a request's last, shorter chunk).
    """

    def __init__(
        self,
        decoder: CodecDecoder,
        slots: int,
        graph_frames: tuple[int, ...] = (),
        capture: bool = False,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.decoder = decoder
        self.slots = slots
        self.scratch = slots  # the padding rows' slot
        self.sizes = buckets(slots)
        self.graph_frames = set(graph_frames) if capture else set()
        cfg, tf = decoder.cfg, decoder.pre_transformer.cfg
        self.window = tf.sliding_window
        weight = decoder.pre_conv.conv.weight
        self.device, self.dtype = weight.device, weight.dtype
        shapes = StreamingDecoder(decoder, batch=1).histories()
        with torch.inference_mode():  # the pools are written in place by every push
            self._pools = [h.past.new_zeros(slots + 1, *h.past.shape[1:]) for h in shapes]
            kv = (slots + 1, tf.num_key_value_heads, self.window - 1, tf.head_dim)
            self._keys = [weight.new_zeros(kv) for _ in range(tf.num_hidden_layers)]
            self._values = [weight.new_zeros(kv) for _ in range(tf.num_hidden_layers)]
            self._positions = torch.zeros(slots + 1, dtype=torch.long, device=self.device)
            # Static inputs and outputs (the captured graphs read and write these addresses).
            self._index = torch.full((slots,), self.scratch, dtype=torch.long, device=self.device)
            self._codes: dict[int, torch.Tensor] = {}
            self._wav: dict[int, torch.Tensor] = {}
        self._lenders: dict[int, StreamingDecoder] = {}  # per bucket: the layers, run at that batch
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph | None] = {}
        self._graph_pool = torch.cuda.graph_pool_handle() if self.graph_frames else None
        self._free = list(range(slots - 1, -1, -1))
        self._taken: set[int] = set()
        self.num_codebooks = cfg.num_quantizers

    # ------------------------------------------------------------ slots
    @property
    def free(self) -> int:
        return len(self._free)

    @torch.inference_mode()
    def open(self, warm: AudioStream | None = None) -> int:
        """A slot for a new stream: zero state, or a copy of ``warm``'s (left untouched)."""
        if not self._free:
            raise SlotsFullError(f"all {self.slots} codec slots are taken")
        slot = self._free.pop()
        try:
            self._load(slot, warm)
        except BaseException:
            self._free.append(slot)
            raise
        self._taken.add(slot)
        return slot

    def close(self, slot: int) -> None:
        """Give a slot back (its state is overwritten by the next ``open``)."""
        if slot not in self._taken:
            raise ValueError(f"slot {slot} is not open")
        self._taken.remove(slot)
        self._free.append(slot)

    def _load(self, slot: int, warm: AudioStream | None) -> None:
        if warm is None:
            for pool in (*self._pools, *self._keys, *self._values):
                pool[slot].zero_()
            self._positions[slot] = 0
            return
        if warm.decoder.decoder is not self.decoder:
            raise ValueError("the warm stream belongs to another codec decoder")
        for pool, history in zip(self._pools, warm.decoder.histories()):
            pool[slot].copy_(history.past[0])
        state = warm.decoder._transformer
        for pools, cached in ((self._keys, state.keys), (self._values, state.values)):
            for pool, past in zip(pools, cached):  # past [1, nkv, <= window - 1, hd], right-aligned
                n = past.shape[2]
                pool[slot].zero_()
                if n:
                    pool[slot, :, pool.shape[2] - n :] = past[0]
        self._positions[slot] = state.position

    # ------------------------------------------------------------ push
    @torch.inference_mode()
    def push(self, slots: list[int], codes: torch.Tensor) -> torch.Tensor:
        """Codes [N, T, Q] of the open ``slots`` -> their waveforms [N, T * U] in [-1, 1] (on the
        codec's device; a new tensor). Raises ValueError for bad codes, before any state moves."""
        n = len(slots)
        if codes.dim() != 3 or codes.shape[0] != n or codes.shape[2] != self.num_codebooks:
            raise ValueError(f"expected codes [{n}, frames, {self.num_codebooks}], got {tuple(codes.shape)}")
        if len(set(slots)) != n or not self._taken.issuperset(slots):
            raise ValueError(f"slots {slots} are not distinct open slots")
        t = codes.shape[1]
        if n == 0 or t == 0:
            return torch.zeros(n, 0, dtype=self.dtype, device=self.device)
        codes = check_codes(codes, self.decoder.cfg).to(self.device)
        size = next(s for s in self.sizes if s >= n)
        inputs = self._inputs(t)
        self._index[:n] = torch.tensor(slots, dtype=torch.long)
        self._index[n:size] = self.scratch
        inputs[:n] = codes
        inputs[n:size] = 0
        self._run(size, t)
        return self._wav[t][:n].clone()

    def push_chunks(self, slots: list[int], chunks: list[torch.Tensor]) -> list[np.ndarray]:
        """:meth:`push` of one chunk [T, Q] per slot, chunks of any lengths (one call and one
        copy to the host per length): each slot's float32 PCM [T * U], in order."""
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(slots)
        lengths: dict[int, list[int]] = {}
        for i, chunk in enumerate(chunks):
            lengths.setdefault(chunk.shape[0], []).append(i)
        for members in lengths.values():
            wav = self.push([slots[i] for i in members], torch.stack([chunks[i] for i in members]))
            for i, pcm in zip(members, wav.to(torch.float32).cpu().numpy()):
                out[i] = pcm
        return out

    def _inputs(self, t: int) -> torch.Tensor:
        """The static codes [slots, t, Q] of pushes of ``t`` frames (and their waveform buffer)."""
        if t not in self._codes:
            dev, samples = self.device, t * self.decoder.total_upsample
            self._codes[t] = torch.zeros(self.slots, t, self.num_codebooks, dtype=torch.long, device=dev)
            self._wav[t] = torch.zeros(self.slots, samples, dtype=self.dtype, device=dev)
        return self._codes[t]

    def _run(self, size: int, t: int) -> None:
        """The push at bucket ``size``: replayed from its graph, captured on first use."""
        key = (size, t)
        if t in self.graph_frames and key not in self._graphs:
            index = self._index.clone()
            self._index.fill_(self.scratch)  # warm-up and capture runs touch the scratch slot only
            try:
                self._graphs[key] = capture(lambda: self._decode(size, t), self._graph_pool)
            except Exception:  # noqa: BLE001 - that shape runs eagerly from now on
                logger.exception("capturing the codec push %s failed; it runs eagerly", key)
                self._graphs[key] = None
            finally:
                self._index.copy_(index)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
        else:
            self._decode(size, t)

    def _lender(self, size: int) -> StreamingDecoder:
        if size not in self._lenders:
            self._lenders[size] = StreamingDecoder(self.decoder, batch=size)
        return self._lenders[size]

    def _decode(self, size: int, t: int) -> None:
        """Rows [0, size) of the static inputs through the decoder, state in and out by slot."""
        index, codes = self._index[:size], self._codes[t][:size]
        lender = self._lender(size)
        histories = lender.histories()
        for history, pool in zip(histories, self._pools):
            history.past = pool.index_select(0, index)
        h = self.decoder.quantizer.decode(codes.transpose(1, 2))  # [B, codebook_dim, T]
        h = lender._pre_conv(h)  # [B, latent, T]
        h = self._transformer(h.transpose(1, 2), index).transpose(1, 2)
        h = lender._post(h)  # [B, 1, T * U]
        for history, pool in zip(histories, self._pools):
            if history.keep:
                pool.index_copy_(0, index, history.past)
        self._wav[t][:size] = h.clamp(min=-1.0, max=1.0)[:, 0]

    def _transformer(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The sliding transformer over [B, T, latent] for rows at their own positions, each with
        its slot's last ``window - 1`` frames of keys and values (the missing ones masked)."""
        m, t, past = self.decoder.pre_transformer, x.shape[1], self.window - 1
        start = self._positions.index_select(0, index)  # [B]
        query_pos = start[:, None] + torch.arange(t, device=x.device)  # [B, T]
        key_pos = start[:, None] - past + torch.arange(past + t, device=x.device)  # [B, past + T]
        delta = query_pos[:, :, None] - key_pos[:, None, :]
        mask = ((delta >= 0) & (delta < self.window) & (key_pos[:, None, :] >= 0))[:, None]
        h = m.input_proj(x)
        cos, sin = m.rope_at(query_pos, h.dtype)
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, hd]: broadcast over heads
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            q, k, v = attn.project(layer.input_layernorm(h), cos, sin)
            k = torch.cat([self._keys[i].index_select(0, index), k], dim=2)  # [B, nkv, past + T, hd]
            v = torch.cat([self._values[i].index_select(0, index), v], dim=2)
            if past:
                self._keys[i].index_copy_(0, index, k[:, :, t:])
                self._values[i].index_copy_(0, index, v[:, :, t:])
            h = h + layer.self_attn_layer_scale(attn.attend(q, k, v, mask))
            h = h + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(h)))
        self._positions.index_copy_(0, index, start + t)
        return m.output_proj(m.norm(h))
