"""The 12 Hz speech tokenizer of a Qwen3-TTS checkpoint (its ``speech_tokenizer/`` folder).

Turns a 24 kHz reference waveform into codes (:meth:`SpeechTokenizer.encode`, transformers' Mimi)
and codes back into a waveform (:meth:`SpeechTokenizer.decode`, our :class:`CodecDecoder`), with
the same preparation, clamping and length rules as the official ``Qwen3TTSTokenizer`` wrapper, so
outputs match it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .codec_encoder import CodecEncoder

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
    the same to both loaders). ``encoder_config`` is kept as the raw dict handed to ``MimiConfig``,
    as the official config class does.
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

    def __init__(
        self,
        config: SpeechTokenizerConfig,
        encoder: CodecEncoder | None,
        decoder: CodecDecoder,
        build_encoder: Callable[[], CodecEncoder] | None = None,
        encoder_tensors: tuple[torch.Tensor, ...] = (),
    ) -> None:
        # encoder None: ``build_encoder`` makes it on first use from ``encoder_tensors`` (the
        # file's, kept until then; see ``load``'s ``lazy_encoder``)
        if encoder is None and build_encoder is None:
            raise ValueError("an encoder, or what builds it, is needed")
        self.config = config
        self._encoder = None if encoder is None else encoder.eval()
        self._build_encoder = build_encoder
        self.pending_encoder_tensors = encoder_tensors if encoder is None else ()
        self._encoder_lock = threading.Lock()
        self.decoder = decoder.eval()

    @property
    def encoder_built(self) -> CodecEncoder | None:
        """The encoder if it is built (never builds it)."""
        return self._encoder

    @property
    def encoder(self) -> CodecEncoder:
        """The Mimi encoder (codes of reference audio), built on first use when loaded lazily."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None and self._build_encoder is not None:
                    started = time.perf_counter()
                    self._encoder = self._build_encoder().eval()
                    self._build_encoder, self.pending_encoder_tensors = None, ()  # the file's tensors go
                    logger.info("speech encoder built on first use in %.2f s", time.perf_counter() - started)
        assert self._encoder is not None
        return self._encoder

    def build_encoder_soon(self) -> None:
        """Build a lazily loaded encoder on a background thread (the first new voice then need
        not wait for it); a failure is logged here and raised again at first use."""
        if self._encoder is not None:
            return

        def build() -> None:
            try:
                _ = self.encoder
            except Exception:  # noqa: BLE001 - encode() will raise it to its caller
                logger.exception("building the speech encoder failed")

        threading.Thread(target=build, name="utter-encoder", daemon=True).start()

    @classmethod
    def load(
        cls,
        folder: Path | str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        lazy_encoder: bool = False,
    ) -> SpeechTokenizer:
        """Load ``config.json`` + ``model.safetensors`` from a ``speech_tokenizer/`` folder.

        No random init is computed: the decoder is built on the meta device and gets the file's
        tensors assigned; Mimi (which has non-persistent buffers that must be real) is built with
        transformers' ``no_init_weights`` and filled by copy. Both loads are strict.
        ``lazy_encoder``: build Mimi when it is first needed (a new voice's reference audio):
        it is transformers' model, and importing transformers costs seconds of a cold start
        that serving stored voices never needs. Its tensors are read now either way.
        """
        folder = Path(folder)
        device = torch.device(device)
        config = SpeechTokenizerConfig.from_folder(folder)
        tensors = load_file(str(folder / WEIGHTS_FILE), device=str(device))
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        enc_state, dec_state = _split_state_dict(tensors)

        with torch.device("meta"):
            decoder = CodecDecoder(config.decoder)
        decoder.load_state_dict(dec_state, strict=True, assign=True)

        def build_encoder() -> CodecEncoder:
            from ...transformers_lock import TRANSFORMERS_IMPORT

            with TRANSFORMERS_IMPORT:  # codec_encoder imports transformers' Mimi; building it more
                from transformers.modeling_utils import no_init_weights

                from .codec_encoder import CodecEncoder

                with no_init_weights(), torch.device(device):
                    encoder = CodecEncoder.from_config_dict(config.encoder_config)
            encoder.load_state_dict(enc_state, strict=True)
            return encoder.to(device=device, dtype=dtype)

        logger.info(
            "loaded speech tokenizer from %s (%d encoder + %d decoder tensors) on %s/%s",
            folder,
            len(enc_state),
            len(dec_state),
            device,
            dtype,
        )
        if lazy_encoder:
            return cls(config, None, decoder, build_encoder, tuple(enc_state.values()))
        return cls(config, build_encoder(), decoder)

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
        (codes,) = self.encoder.encode_codes(
            wav[None],
            num_samples=None,
            valid_quantizers=self.config.encoder_valid_num_quantizers,
            downsample_rate=self.config.encode_downsample_rate,
        )
        return codes.to(torch.long)

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
