"""The 12 Hz speech tokenizer of a Qwen3-TTS checkpoint (its ``speech_tokenizer/`` folder).

Turns a 24 kHz reference waveform into codes (:meth:`SpeechTokenizer.encode`, our Mimi :class:`CodecEncoder`)
and codes back into a waveform (:meth:`SpeechTokenizer.decode`, our :class:`CodecDecoder`), with
the same preparation, clamping and length rules as the official ``Qwen3TTSTokenizer`` wrapper, so
outputs match it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..streaming import AudioStream
from .codec_decoder import (
    OFFICIAL_CHUNK_FRAMES,
    OFFICIAL_LEFT_CONTEXT_FRAMES,
    CodecDecoder,
    CodecDecoderConfig,
)
from .codec_encoder import CodecEncoder, CodecEncoderConfig

logger = logging.getLogger(__name__)

MODEL_TYPE = "qwen3_tts_tokenizer_12hz"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
ENCODER_PREFIX = "encoder."
DECODER_PREFIX = "decoder."


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """The speech tokenizer's ``config.json``.

    Top-level defaults are the official ``Qwen3TTSTokenizerV2Config`` defaults (a missing key means
    the same to both loaders). ``encoder_config`` is kept as the raw dict (a ``MimiConfig``'s, read
    by :class:`CodecEncoderConfig`), as the official config class does.
    """

    decoder: CodecDecoderConfig
    encoder_config: dict[str, Any] = field(hash=False)
    encoder_valid_num_quantizers: int = 16
    input_sample_rate: int = 24000
    output_sample_rate: int = 24000
    encode_downsample_rate: int = 1920
    decode_upsample_rate: int = 1920

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeechTokenizerConfig:
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"speech tokenizer model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        names = set(cls.__dataclass_fields__) - {"decoder", "encoder_config"}
        cfg = cls(
            decoder=CodecDecoderConfig.from_dict(data.get("decoder_config") or {}),
            encoder_config=dict(data.get("encoder_config") or {}),
            **{k: int(v) for k, v in data.items() if k in names},
        )
        cfg.validate()
        return cfg

    @classmethod
    def from_folder(cls, folder: Path | str) -> SpeechTokenizerConfig:
        path = Path(folder) / CONFIG_FILE
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def validate(self) -> None:
        """Reject files whose parts disagree; the official code would silently misbehave on them."""
        if self.decoder.total_upsample != self.decode_upsample_rate:
            raise ValueError(
                f"decoder upsamples by {self.decoder.total_upsample} but decode_upsample_rate is "
                f"{self.decode_upsample_rate}"
            )
        if self.decoder.num_quantizers != self.encoder_valid_num_quantizers:
            raise ValueError(
                f"decoder takes {self.decoder.num_quantizers} codebooks but the encoder keeps "
                f"{self.encoder_valid_num_quantizers}"
            )
        enc_q = self.encoder_config.get("num_quantizers", 32)
        if self.encoder_valid_num_quantizers > enc_q:
            raise ValueError(f"encoder keeps {self.encoder_valid_num_quantizers} of only {enc_q} codebooks")

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content, in the official layout."""
        return {
            "architectures": ["Qwen3TTSTokenizerV2Model"],
            "model_type": MODEL_TYPE,
            "encoder_valid_num_quantizers": self.encoder_valid_num_quantizers,
            "input_sample_rate": self.input_sample_rate,
            "output_sample_rate": self.output_sample_rate,
            "encode_downsample_rate": self.encode_downsample_rate,
            "decode_upsample_rate": self.decode_upsample_rate,
            "encoder_config": dict(self.encoder_config),
            "decoder_config": self.decoder.to_dict(),
        }


def _split_state_dict(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    encoder: dict[str, torch.Tensor] = {}
    decoder: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith(ENCODER_PREFIX):
            encoder[key[len(ENCODER_PREFIX) :]] = value
        elif key.startswith(DECODER_PREFIX):
            decoder[key[len(DECODER_PREFIX) :]] = value
        else:
            raise ValueError(f"unexpected tensor {key!r} in the speech tokenizer weights")
    return encoder, decoder


class SpeechTokenizer:
    """Encoder + decoder of the 12 Hz speech tokenizer, on one device and dtype."""

    def __init__(self, config: SpeechTokenizerConfig, encoder: CodecEncoder, decoder: CodecDecoder) -> None:
        self.config = config
        self.encoder = encoder.eval()
        self.decoder = decoder.eval()

    @classmethod
    def load(
        cls,
        folder: Path | str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> SpeechTokenizer:
        """Load ``config.json`` + ``model.safetensors`` from a ``speech_tokenizer/`` folder.

        No random init is computed: encoder and decoder are built on the meta device and get the
        file's tensors assigned, strictly (every tensor of the file used, none missing).
        """
        folder = Path(folder)
        device = torch.device(device)
        config = SpeechTokenizerConfig.from_folder(folder)
        encoder_config = CodecEncoderConfig.from_dict(config.encoder_config)
        tensors = load_file(str(folder / WEIGHTS_FILE), device=str(device))
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        enc_state, dec_state = _split_state_dict(tensors)

        with torch.device("meta"):
            decoder = CodecDecoder(config.decoder)
            encoder = CodecEncoder(encoder_config)
        decoder.load_state_dict(dec_state, strict=True, assign=True)
        encoder.load_state_dict(enc_state, strict=True, assign=True)
        encoder.to(device)  # its rotary table, made on the CPU (the file's tensors are already there)
        if encoder.frame_samples != config.encode_downsample_rate:
            raise ValueError(
                f"the encoder makes a frame of {encoder.frame_samples} samples but encode_downsample_rate "
                f"is {config.encode_downsample_rate}"
            )
        logger.info(
            "loaded speech tokenizer from %s (%d encoder + %d decoder tensors) on %s/%s",
            folder,
            len(enc_state),
            len(dec_state),
            device,
            dtype,
        )
        return cls(config, encoder, decoder)

    # ---------------------------------------------------------------- properties

    @property
    def sample_rate(self) -> int:
        """Sample rate of decoded audio."""
        return self.config.output_sample_rate

    @property
    def input_sample_rate(self) -> int:
        """Sample rate :meth:`encode` expects (resample before calling)."""
        return self.config.input_sample_rate

    @property
    def frame_samples(self) -> int:
        """Decoded samples per frame of codes (1920 for the published model: 12.5 Hz at 24 kHz)."""
        return self.config.decode_upsample_rate

    @property
    def num_codebooks(self) -> int:
        return self.config.decoder.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.config.decoder.codebook_size

    @property
    def device(self) -> torch.device:
        return self.decoder.pre_conv.conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The decoder's dtype (the encoder's may differ, see :meth:`set_decoder_dtype`)."""
        return self.decoder.pre_conv.conv.weight.dtype

    def set_decoder_dtype(self, dtype: torch.dtype) -> None:
        """Run the decoder in ``dtype`` (the encoder keeps its own, so voice prompts do not change).

        bfloat16 is what the official package runs when loaded in bfloat16; on CPUs with bfloat16
        units its convolutions take half the time of float32's (2-core AVX-512 CPU: 14 instead of
        30 ms per frame).
        """
        self.decoder.to(dtype)

    # ---------------------------------------------------------------- encode / decode

    def encode(self, wav_24k: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Mono waveform [samples] at :attr:`input_sample_rate` -> codes LongTensor [frames, Q].

        frames = ceil(samples / encode_downsample_rate). As in the official wrapper the samples
        are made float32, then cast to the model dtype; there is no normalisation or padding.
        Batched official encodes zero-pad shorter items, which can change their last code when
        Mimi's 25 Hz frame count is odd (its downsampler pads by replication); one item at a time,
        as here, is the official single-reference path.
        """
        if isinstance(wav_24k, np.ndarray):
            wav = torch.from_numpy(np.ascontiguousarray(wav_24k, dtype=np.float32))
        else:
            wav = wav_24k.detach().to(torch.float32)
        if wav.dim() != 1 or wav.numel() == 0:
            raise ValueError(f"expected a non-empty mono waveform [samples], got shape {tuple(wav.shape)}")
        wav = wav.to(device=self.device, dtype=next(self.encoder.parameters()).dtype)
        codes = self.encoder.encode(wav[None], self.config.encoder_valid_num_quantizers)
        return codes[0].T.to(torch.long)

    @torch.inference_mode()
    def decode(
        self,
        codes: torch.Tensor,
        chunk_size: int = OFFICIAL_CHUNK_FRAMES,
        left_context: int = OFFICIAL_LEFT_CONTEXT_FRAMES,
    ) -> np.ndarray:
        """Codes [frames, Q] -> float32 waveform [n * frame_samples] at :attr:`sample_rate`.

        Mirrors the official wrapper: n counts the frames whose first code is not -1 (the batch
        padding value; it counts such frames anywhere, not only at the end), codes are clamped
        to >= 0 (no upper clamp: codes >= codebook_size are an error), the decoder runs chunked
        (300 frames, 25 frames of left context), the output is clamped to [-1, 1] by the decoder
        and cut to n * frame_samples samples.
        """
        if codes.dim() != 2 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"expected codes [frames, {self.num_codebooks}], got shape {tuple(codes.shape)}")
        codes = codes.to(device=self.device, dtype=torch.long)
        keep = int((codes[:, 0] > -1).sum()) * self.frame_samples
        codes = codes.clamp(min=0)
        if codes.numel() and int(codes.max()) >= self.codebook_size:
            raise ValueError(f"codes must be < codebook_size ({self.codebook_size})")
        wav = self.decoder.chunked_decode(codes.T[None], chunk_size, left_context)  # [1, 1, frames * U]
        return wav[0, 0, :keep].to(torch.float32).cpu().numpy()

    def stream(self) -> AudioStream:
        """A stateful decoder for one utterance: push codes [frames, Q] as they are made, get their
        float32 audio at once. The pushes, concatenated, equal the one-shot decode (so :meth:`decode`
        too, up to its 300-frame chunk), whatever the chunk sizes; see ``utter.engine.streaming``.
        """
        return AudioStream(self.decoder)

    def frames_for_samples(self, num_samples: int) -> int:
        """How many frames :meth:`encode` returns for ``num_samples`` input samples."""
        return math.ceil(num_samples / self.config.encode_downsample_rate)


def official_reference_cut(ref_frames: int, total_frames: int, num_samples: int) -> int:
    """Samples the official voice-clone path drops from the front of an ICL decode.

    ``generate_voice_clone`` decodes ``cat([ref_codes, generated_codes])`` and returns
    ``wav[cut:]`` with ``cut = int(ref_len / max(total_len, 1) * wav_len)``. In floating point
    this is often one sample short of ``ref_frames * frame_samples`` (e.g. 15 of 22 frames gives
    28799, not 28800), so sample-exact parity needs this very formula.
    """
    return int(ref_frames / max(total_frames, 1) * num_samples)
