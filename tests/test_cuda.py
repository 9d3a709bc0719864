"""On a GPU (skipped without one): captured CUDA graphs, captured on first use per batch bucket,
length bucket and sampling plan, give the eager dynamic step's codes, and a step reads the
device once; codec pushes replayed from graphs equal each stream's own decode; greedy codes
equal the official package's, both on the GPU. Run by
``scripts/gpu_check.sh`` on a lent GPU; the same logic runs on the CPU in ``test_graphs.py``,
``test_host_reads.py`` and ``test_streaming.py``.
"""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch

from tests.conftest import REF_TEXT, streams_in_slots
from utter.engine.engine import Engine, Request
from utter.engine.sampling import GenerationOptions, SamplingOptions
from utter.engine.sched.runner import Runner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cuda_engine(tiny_checkpoint):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return Engine.load(str(tiny_checkpoint), device="cuda", weight_mode="float32", max_batch=4)


def _requests(engine, ref_wav) -> list[Request]:
    voice = engine.create_voice(ref_wav, ref_text=REF_TEXT)
    top_k = SamplingOptions(do_sample=True, temperature=0.9, top_k=30, top_p=1.0)
    top_p = SamplingOptions(do_sample=True, temperature=0.9, top_k=30, top_p=0.7)
    return [
        Request("Greedy, running on for a while.", voice, "English", GenerationOptions.greedy(max_frames=90)),
        Request("Top k only.", voice, "English", GenerationOptions(top_k, top_k, seed=8, max_frames=20)),
        Request("Top p too.", voice, "English", GenerationOptions(top_p, top_k, seed=9, max_frames=6)),
    ]


def _eager_codes(engine, reqs) -> list[torch.Tensor]:
    """The requests' codes on a fresh dynamic (uncaptured) runner of ``engine``."""
    saved = engine.runner
    try:
        engine.runner = Runner(engine.talker, engine.config)
        return engine.generate_codes(reqs)
    finally:
        engine.runner = saved


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and torch.equal(a.cpu(), b.cpu())


def test_captured_graphs_equal_the_eager_dynamic_step(cuda_engine, ref_wav) -> None:
    reqs = _requests(cuda_engine, ref_wav)
    saved = cuda_engine.runner
    try:
        cuda_engine.runner = Runner(cuda_engine.talker, cuda_engine.config)
        cuda_engine.runner.enable_graphs(max_batch=4, max_len=512, capture=True)
        graphs = cuda_engine.runner.graphs
        assert graphs.capture, "capture is off"
        captured = cuda_engine.generate_codes(reqs)
        keys = [k for k, g in graphs._graphs.items() if g is not None]
        assert any(k[0] == "advance" and k[2] > 64 for k in keys)  # a longer length bucket, captured lazily
    finally:
        cuda_engine.runner = saved
    _assert_same(captured, _eager_codes(cuda_engine, reqs))


@pytest.mark.parametrize("pipelined", [False, True], ids=["plain", "pipelined"])
def test_one_device_read_per_step_on_cuda(cuda_engine, ref_wav, monkeypatch, pipelined: bool) -> None:
    """Plain steps read the device once (``.cpu()``); pipelined ones (the CUDA default) not at
    all: they copy into pinned memory and wait for that copy's event, once, in the next step."""
    runner = Runner(cuda_engine.talker, cuda_engine.config)
    runner.pipelined = pipelined
    for req in _requests(cuda_engine, ref_wav):
        opts = dataclasses.replace(req.options, ignore_eos=True)
        runner.add(cuda_engine._sequence(dataclasses.replace(req, options=opts)))
    order: list[str] = []
    for name in ("cpu", "item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            order.append(f"{_name}:{self.device.type}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    waits = []
    real_wait = torch.cuda.Event.synchronize
    monkeypatch.setattr(torch.cuda.Event, "synchronize", lambda self: (waits.append(1), real_wait(self))[1])
    with torch.inference_mode():
        for step in range(5):
            order.clear()
            waits.clear()
            runner.step()
            device_reads = [o for o in order if o.endswith(":cuda")]
            assert device_reads == ([] if pipelined else ["cpu:cuda"]), order
            assert len(waits) == (1 if pipelined and step > 0 else 0)  # the previous step's copy
    counts = collections.Counter(order)
    assert counts["cpu:cuda"] == (0 if pipelined else 1)


def test_compiled_layers_in_captured_graphs_equal_eager(tiny_checkpoint, cuda_engine, ref_wav) -> None:
    """Compiled (Triton) layers replayed from CUDA graphs give the eager dynamic step's codes,
    in float32."""
    compiled = Engine.load(
        str(tiny_checkpoint), device="cuda", weight_mode="float32", max_batch=4, compile=True
    )
    assert compiled.talker.model.fused is not None, "compiling failed on this GPU (see the log)"
    reqs = _requests(compiled, ref_wav)
    _assert_same(compiled.generate_codes(reqs), _eager_codes(cuda_engine, reqs))


@pytest.mark.parametrize("own_stream", [True, False], ids=["codec-stream", "one-stream"])
def test_the_batcher_streams_on_the_codec_stream_what_generate_decodes(
    cuda_engine, ref_wav, monkeypatch, own_stream: bool
) -> None:
    """The batcher's codec runs on its own CUDA stream, overlapping the decode loop: its audio is
    the one-shot decode's (batched chunks to float rounding; a missed synchronisation between
    the streams would show as garbage, not rounding)."""
    import numpy as np

    from utter.engine.sched.batcher import Batcher

    reqs = _requests(cuda_engine, ref_wav)
    want = [r.audio for r in cuda_engine.generate_batch(reqs)]
    monkeypatch.setenv("UTTER_CODEC_STREAM", "1" if own_stream else "0")
    with Batcher(cuda_engine, max_batch=4) as batcher:
        assert (batcher._codec_stream is not None) == own_stream
        streams = [batcher.submit(r) for r in reqs]
        got = [s.audio() for s in streams]
        slots = batcher._slots
        assert slots is not None and slots.free == slots.slots  # the GPU default, all given back
        assert any(g is not None for g in slots._graphs.values()), "no codec push was captured"
    for a, b in zip(got, want):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-3


def test_a_long_text_in_parts_on_cuda_equals_its_parts_alone(cuda_engine, ref_wav) -> None:
    """A long text's parts at once on the GPU path (graphs, pipelined steps, codec slots on
    their stream), read as one stream: each part's audio as alone, crossfaded in order."""
    import numpy as np

    from tests.test_longform import alone, joined, parts_of, read_in_loop
    from utter.engine.sched.batcher import Batcher

    voice = cuda_engine.create_voice(ref_wav, ref_text=REF_TEXT)
    requests = parts_of(voice, GenerationOptions(seed=7))
    want = joined(alone(cuda_engine, requests))
    with Batcher(cuda_engine, max_batch=4) as batcher:
        _, got, peak = read_in_loop(batcher, requests, 3)
    assert peak == 3 and len(got) == len(want)
    assert np.abs(got - want).max() < 1e-3


def test_codec_slots_replayed_from_graphs_equal_streams_pushed_alone(cuda_engine) -> None:
    """Codec pushes of several streams, captured per (batch bucket, chunk length) on first use
    and replayed after: each stream's audio is its own AudioStream's, and the capture (warm-up
    and capture runs write the scratch slot only) leaves every stream's state as it was."""
    import numpy as np

    from utter.engine.codec_slots import CodecSlots

    codec = cuda_engine.codec
    pool = CodecSlots(codec.decoder, slots=4, graph_frames=(2, 5), capture=True)
    gen = torch.Generator().manual_seed(3)

    def codes(n: int) -> torch.Tensor:
        return torch.randint(0, codec.codebook_size, (n, codec.num_codebooks), generator=gen)

    alone, slots = streams_in_slots(codec, pool, codes, (0, 4, 40))
    for rows, t in (([0, 1, 2], 2), ([0, 1, 2], 5), ([2, 0], 5), ([1], 3), ([0, 1, 2], 2), ([1, 2], 2)):
        chunks = [codes(t) for _ in rows]
        got = pool.push([slots[r] for r in rows], torch.stack(chunks)).float().cpu().numpy()
        for r, chunk, wav in zip(rows, chunks, got):
            assert np.abs(wav - alone[r].push(chunk)).max() < 1e-3
    captured = {key for key, graph in pool._graphs.items() if graph is not None}
    assert captured == {(4, 2), (4, 5), (2, 5), (2, 2)}  # chunk length 3 runs eagerly


def test_greedy_codes_on_cuda_equal_the_official_package_on_cuda(tiny_checkpoint, ref_wav) -> None:
    """Both on the GPU in float32 (no TF32): the reference codes (our Mimi encoder), the greedy
    codes of a batch in three languages (graphs, fused projections) and the waveforms."""
    from tests.test_parity import _compare

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    _compare(tiny_checkpoint, ref_wav, x_vector_only=False, device="cuda")
