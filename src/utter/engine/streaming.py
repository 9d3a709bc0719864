"""Exact streaming decode of the 12 Hz codec: push codes as they are made, get their audio at once.

Every layer of :class:`~utter.engine.model.codec_decoder.CodecDecoder` is causal, so instead of
re-decoding a window with hundreds of frames of left context per chunk (the receptive field is
580 frames for the real model), each layer carries just the state its next input needs:

* causal conv (stride 1): its last ``(kernel - 1) * dilation`` inputs. They start as zeros, which
  is exactly the left zero padding of the one-shot decode (and of the official one);
* transposed conv: its last ``ceil(kernel / stride) - 1`` inputs, whose outputs overlap the next
  chunk's first samples (1 input for the SEANet blocks' kernel = 2 x stride, none for kernel = stride);
* transformer layer: rotary keys and values of the last ``sliding_window - 1`` frames, plus the
  absolute frame position (rotary angles use absolute positions, as the one-shot decode does);
* the RVQ lookup, projections, norms, SnakeBeta and MLPs work per frame or per sample: no state.

So the audio of codes pushed in chunks of any sizes, concatenated, equals ``CodecDecoder.forward``
on all codes at once (to float rounding), and the work per push is proportional to its frames.
The per-layer pipeline below mirrors the forwards in ``codec_decoder.py``; the exactness tests
in ``tests/test_streaming.py`` keep the two in step.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model.codec_decoder import (
    CausalConv1d,
    CausalTransposeConv1d,
    CodecDecoder,
    CodecDecoderConfig,
    ConvNeXtBlock,
    ResidualUnit,
    SlidingTransformer,
    SnakeBeta,
    UpsampleBlock,
    conv1d,
    sliding_window_mask,
    transposed_conv1d,
)


class _Stage:
    """One streamed layer: ``__call__`` takes the next samples [B, C, L], ``reset`` forgets the past."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Stateless stages have nothing to forget."""

    def histories(self) -> list[_History]:
        """The conv histories this stage carries, in a fixed order (stateless: none)."""
        return []


class _Stateless(_Stage):
    """A layer that works sample by sample (SnakeBeta), used as it is."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class _History:
    """The last ``keep`` input samples of a conv, [B, C, keep]; zeros at the start of a stream."""

    def __init__(self, conv: nn.Conv1d | nn.ConvTranspose1d, keep: int, batch: int) -> None:
        self.conv, self.keep, self.batch = conv, keep, batch
        self.reset()

    def reset(self) -> None:
        weight = self.conv.weight
        self.past = weight.new_zeros(self.batch, self.conv.in_channels, self.keep)

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, L] -> [B, C, keep + L]: the history followed by ``x``; remembers the new tail."""
        if self.keep == 0:
            return x
        full = torch.cat([self.past, x], dim=-1)
        self.past = full[..., full.shape[-1] - self.keep :].clone()  # clone: do not pin the chunk
        return full


class _CausalConv(_Stage):
    """A stride-1 :class:`CausalConv1d` over a stream: the history replaces its left zero padding."""

    def __init__(self, module: CausalConv1d, batch: int) -> None:
        if module.stride != 1:
            raise ValueError("streaming supports stride-1 causal convs only (the decoder has no others)")
        self.conv = module.conv
        self.history = _History(module.conv, module.left_pad, batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, L] -> [B, C_out, L]
        return conv1d(self.conv, self.history.extend(x))

    def reset(self) -> None:
        self.history.reset()

    def histories(self) -> list[_History]:
        return [self.history]


class _TransposeConv(_Stage):
    """A :class:`CausalTransposeConv1d` over a stream: L inputs -> exactly L * stride samples.

    Output sample n sums the inputs i with 0 <= n - i * stride < kernel, so the outputs of a chunk
    also need the previous ``ceil(kernel / stride) - 1`` inputs. Recomputing them (rather than
    carrying the overlap-added output tail) keeps the bias added once and works for any kernel.
    """

    def __init__(self, module: CausalTransposeConv1d, batch: int) -> None:
        self.conv, self.stride = module.conv, module.stride
        self.history = _History(module.conv, math.ceil(module.kernel_size / module.stride) - 1, batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, L] -> [B, C_out, L * stride]
        # [B, C_out, (keep + L - 1) * stride + kernel]
        y = transposed_conv1d(self.conv, self.history.extend(x))
        start = self.history.keep * self.stride
        return y[..., start : start + x.shape[-1] * self.stride]

    def reset(self) -> None:
        self.history.reset()

    def histories(self) -> list[_History]:
        return [self.history]


class _ConvNeXt(_Stage):
    """Mirrors :meth:`ConvNeXtBlock.forward` with a streamed depthwise conv."""

    def __init__(self, module: ConvNeXtBlock, batch: int) -> None:
        self.block = module
        self.dwconv = _CausalConv(module.dwconv, batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, L] -> [B, C, L]
        b = self.block
        h = self.dwconv(x).transpose(1, 2)  # [B, L, C]
        h = b.pwconv2(F.gelu(b.pwconv1(b.norm(h))))
        return x + (b.gamma * h).transpose(1, 2)

    def reset(self) -> None:
        self.dwconv.reset()

    def histories(self) -> list[_History]:
        return self.dwconv.histories()


class _Residual(_Stage):
    """Mirrors :meth:`ResidualUnit.forward` with a streamed dilated conv (its 1x1 conv has no past)."""

    def __init__(self, module: ResidualUnit, batch: int) -> None:
        self.unit = module
        self.conv1 = _CausalConv(module.conv1, batch)
        self.conv2 = _CausalConv(module.conv2, batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        u = self.unit
        return x + self.conv2(u.act2(self.conv1(u.act1(x))))

    def reset(self) -> None:
        self.conv1.reset()
        self.conv2.reset()

    def histories(self) -> list[_History]:
        return self.conv1.histories() + self.conv2.histories()


class _Sequence(_Stage):
    def __init__(self, stages: list[_Stage]) -> None:
        self.stages = stages

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()

    def histories(self) -> list[_History]:
        return [h for stage in self.stages for h in stage.histories()]


def _streamed(module: nn.Module, batch: int) -> _Stage:
    """The streaming counterpart of one convolutional layer of the decoder."""
    if isinstance(module, CausalConv1d):
        return _CausalConv(module, batch)
    if isinstance(module, CausalTransposeConv1d):
        return _TransposeConv(module, batch)
    if isinstance(module, ConvNeXtBlock):
        return _ConvNeXt(module, batch)
    if isinstance(module, ResidualUnit):
        return _Residual(module, batch)
    if isinstance(module, UpsampleBlock):
        return _Sequence([_streamed(unit, batch) for unit in module.block])
    if isinstance(module, SnakeBeta):
        return _Stateless(module)
    raise TypeError(f"no streaming version of {type(module).__name__}")


class _Transformer:
    """Mirrors :meth:`SlidingTransformer.forward` with a sliding KV cache per layer."""

    def __init__(self, module: SlidingTransformer, batch: int) -> None:
        self.module = module
        self.window = module.cfg.sliding_window
        self.batch = batch
        self.reset()

    def reset(self) -> None:
        cfg, weight = self.module.cfg, self.module.input_proj.weight
        empty = weight.new_zeros(self.batch, cfg.num_key_value_heads, 0, cfg.head_dim)
        self.keys = [empty] * cfg.num_hidden_layers  # each [B, nkv, <= window - 1, hd], roped
        self.values = [empty] * cfg.num_hidden_layers
        self.position = 0  # absolute index of the next frame

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, latent] -> [B, T, latent]
        m, t = self.module, x.shape[1]
        h = m.input_proj(x)
        cos, sin = m.rope(t, x.device, h.dtype, start=self.position)
        past = self.keys[0].shape[2]
        query_pos = torch.arange(self.position, self.position + t, device=x.device)
        key_pos = torch.arange(self.position - past, self.position + t, device=x.device)
        mask = sliding_window_mask(query_pos, key_pos, self.window)  # [T, past + T]
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            q, k, v = attn.project(layer.input_layernorm(h), cos, sin)
            k = torch.cat([self.keys[i], k], dim=2)  # [B, nkv, past + T, hd]
            v = torch.cat([self.values[i], v], dim=2)
            keep = min(self.window - 1, k.shape[2])
            self.keys[i] = k[:, :, k.shape[2] - keep :].clone()
            self.values[i] = v[:, :, v.shape[2] - keep :].clone()
            h = h + layer.self_attn_layer_scale(attn.attend(q, k, v, mask))
            h = h + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(h)))
        self.position += t
        return m.output_proj(m.norm(h))


class StreamingDecoder:
    """Incremental, exact codec decoding for ``batch`` streams that advance together.

    ``push`` codes [B, T, Q] and get their waveform [B, T * total_upsample]; the pushes of a stream,
    concatenated, equal the one-shot ``decoder(codes)``. Chunks may have any size (a first chunk of
    one frame gives the first audio after one frame) and the cost of a push depends only on its
    frames. Shares the decoder's weights; holds its own state, so many can run on one decoder.
    """

    def __init__(self, decoder: CodecDecoder, batch: int = 1) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.decoder = decoder
        self.batch = batch
        self._pre_conv = _CausalConv(decoder.pre_conv, batch)
        self._transformer = _Transformer(decoder.pre_transformer, batch)
        upsample = [_streamed(stage, batch) for up in decoder.upsample for stage in up]
        self._post = _Sequence(upsample + [_streamed(stage, batch) for stage in decoder.decoder])

    @property
    def frames(self) -> int:
        """Frames pushed since the start (or the last :meth:`reset`)."""
        return self._transformer.position

    def reset(self) -> None:
        """Start new streams: forget every layer's past."""
        self._pre_conv.reset()
        self._transformer.reset()
        self._post.reset()

    def histories(self) -> list[_History]:
        return self._pre_conv.histories() + self._post.histories()

    @property
    def post_reach_frames(self) -> int:
        """How many frames back the state of the stages after the transformer (the upsampling
        convs, 98% of a push's work) can see: each conv's history of ``keep`` samples at ``rate``
        samples per frame reaches ``keep / rate`` frames further back; summed along the chain
        (the skips of residual units reach no further), plus a frame for the alignment."""
        rate, reach = 1, 0.0
        for history in self._post.histories():
            reach += history.keep / rate
            if isinstance(history.conv, nn.ConvTranspose1d):
                rate *= history.conv.stride[0]
        return math.ceil(reach) + 1

    def _check(self, codes: torch.Tensor) -> None:
        cfg = self.decoder.cfg
        if codes.dim() != 3 or codes.shape[0] != self.batch or codes.shape[2] != cfg.num_quantizers:
            raise ValueError(
                f"expected codes [{self.batch}, frames, {cfg.num_quantizers}], got {tuple(codes.shape)}"
            )

    def _front(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.decoder.quantizer.decode(codes.transpose(1, 2))  # [B, codebook_dim, T]
        h = self._pre_conv(h)  # [B, latent, T]
        return self._transformer(h.transpose(1, 2)).transpose(1, 2)  # [B, latent, T]

    @torch.inference_mode()
    def push_context(self, codes: torch.Tensor) -> None:
        """Advance the streams over codes [B, T, Q] whose audio nobody wants, running only the
        stages up to the transformer (whose state reaches back over every frame); the stages
        after it stay as they were. Only for context that at least ``post_reach_frames`` pushed
        frames follow before any audio is used: by then the later stages' state depends only
        on those frames, so it equals, to float rounding, the state after pushing everything
        (``tests/test_streaming.py``). A voice's warm state is made so (``engine/warm.py``)."""
        self._check(codes)
        if codes.shape[1]:
            self._front(codes)

    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, T, Q] (long, in [0, codebook_size)) -> waveform [B, T * total_upsample] in [-1, 1]."""
        self._check(codes)
        if codes.shape[1] == 0:  # the convs' histories need at least one new sample
            dtype = self.decoder.pre_conv.conv.weight.dtype
            return torch.zeros(self.batch, 0, dtype=dtype, device=codes.device)
        h = self._post(self._front(codes))  # [B, 1, T * U]
        return h.clamp(min=-1.0, max=1.0)[:, 0]


class AudioStream:
    """One utterance's streaming decode as numpy: codes [T, Q] in, float32 audio [T * U] out.

    What :meth:`SpeechTokenizer.stream` returns. Codes may live on any device; they are checked
    (on the host for host codes, else one device sync per push) because a bad code on CUDA would
    otherwise be a device-side assert.
    """

    def __init__(self, decoder: CodecDecoder) -> None:
        self.decoder = StreamingDecoder(decoder, batch=1)

    @property
    def frames(self) -> int:
        return self.decoder.frames

    def reset(self) -> None:
        self.decoder.reset()

    def fork(self) -> AudioStream:
        """An independent copy of this stream's state (the decoder's weights are shared).

        A voice's reference codes are pushed once; every request in that voice starts from a
        fork of that warm stream instead of decoding the reference again.
        """
        shared = self.decoder.decoder
        memo: dict[int, object] = {id(shared): shared}
        for obj in (*shared.modules(), *shared.parameters(), *shared.buffers()):
            memo[id(obj)] = obj
        return copy.deepcopy(self, memo)

    def push(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [T, Q] -> float32 waveform [T * frame_samples]."""
        wav = self.decoder.push(self._checked(codes)[None])  # [1, T * U]
        return wav[0].to(torch.float32).cpu().numpy()

    def push_context(self, codes: torch.Tensor) -> None:
        """Codes [T, Q] whose audio is not wanted (see :meth:`StreamingDecoder.push_context`)."""
        self.decoder.push_context(self._checked(codes)[None])

    def _checked(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [T, Q] on the decoder's device, or ValueError for a bad shape or value."""
        cfg = self.decoder.decoder.cfg
        if codes.dim() != 2 or codes.shape[1] != cfg.num_quantizers:
            raise ValueError(f"expected codes [frames, {cfg.num_quantizers}], got {tuple(codes.shape)}")
        device = self.decoder.decoder.pre_conv.conv.weight.device
        return check_codes(codes, cfg).to(device)


def check_codes(codes: torch.Tensor, cfg: CodecDecoderConfig) -> torch.Tensor:
    """``codes`` as long, or ValueError when a value is outside the codebooks.

    Checked where the codes are: the decode loop hands out host codes, so this costs no device
    sync (a check after the copy to the GPU would wait for it), and a bad code on CUDA would
    otherwise be a device-side assert that poisons the process.
    """
    if codes.numel() and not bool(((codes >= 0) & (codes < cfg.codebook_size)).all()):
        raise ValueError(f"codes must be in [0, {cfg.codebook_size})")
    return codes.to(torch.long)


# Audio chunking: a first chunk of 2 frames (160 ms of audio) so the first audio comes early,
# then 12 frames (decoding a few frames at a time costs more per frame on CPUs).
FIRST_CHUNK_FRAMES = 2
CHUNK_FRAMES = 12


class PcmChunker:
    """Turns one request's frames into PCM chunks: a small first chunk (first audio comes early),
    larger ones after (decoding a few frames at a time costs more per frame on CPUs)."""

    def __init__(
        self, stream: AudioStream | None, first_chunk: int = FIRST_CHUNK_FRAMES, chunk: int = CHUNK_FRAMES
    ) -> None:
        # stream: None when the caller decodes the due chunks itself (``offer`` and ``take`` only)
        self.stream = stream
        self.first_chunk = first_chunk
        self.chunk = chunk
        self.pending: list[torch.Tensor] = []
        self.chunks = 0

    def add(self, codes: torch.Tensor) -> np.ndarray | None:
        """Add one frame's codes [N]; returns a PCM chunk when one is due."""
        due = self.offer(codes)
        if due is None:
            return None
        assert self.stream is not None, "a chunker without a stream only offers and takes"
        return self.stream.push(due)

    def offer(self, codes: torch.Tensor) -> torch.Tensor | None:
        """Add one frame's codes [N]; returns the codes of a chunk that is due, to be decoded by
        the caller (with other streams' chunks: :class:`~utter.engine.codec_slots.CodecSlots`)."""
        self.pending.append(codes)
        if len(self.pending) >= (self.first_chunk if self.chunks == 0 else self.chunk):
            return self.take()
        return None

    def take(self) -> torch.Tensor | None:
        """The pending frames' codes [T, N] as a chunk (None when there are none)."""
        if not self.pending:
            return None
        codes, self.pending = torch.stack(self.pending), []
        self.chunks += 1
        return codes

    def flush(self) -> np.ndarray | None:
        """Decode whatever frames are pending (at the end of a request)."""
        due = self.take()
        if due is None:
            return None
        assert self.stream is not None, "a chunker without a stream only offers and takes"
        return self.stream.push(due)
