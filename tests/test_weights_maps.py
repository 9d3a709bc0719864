"""The checkpoint's memory maps are let go after loading (``engine/weights.py``,
``release_file_views``): a tensor kept as stored no longer pins the whole file, and with it the
pages of every weight the conversion read, in the process's resident memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tests.conftest import REF_TEXT
from utter.engine import weights as w
from utter.engine.sampling import GenerationOptions

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the maps in /proc")


def _mapped_bytes(path: Path) -> int:
    return sum(hi - lo for lo, hi in w._mapped_ranges(path))


def _module_from(path: Path) -> nn.Module:
    """A module whose tensors are views of ``path``'s memory map, as ``load_weights`` leaves them."""
    module = nn.Module()
    module.embed = nn.Module()
    module.small = nn.Module()
    with safe_open(str(path), framework="pt") as f:
        module.embed.weight = nn.Parameter(f.get_tensor("embed.weight"), requires_grad=False)
        module.small.register_buffer("table", f.get_tensor("small.table"))
        module.small.tied = module.embed.weight  # the same tensor twice: stays one tensor
        module.small.register_buffer("flat", module.embed.weight.detach().view(-1))  # same bytes, other shape
    return module


def test_views_left_by_loading_are_moved_and_the_file_map_closes(tmp_path, monkeypatch) -> None:
    blob = tmp_path / "blobs" / "3f2a"  # a hub cache: the snapshot's file is a link to its blob
    blob.parent.mkdir()
    tensors = {
        "embed.weight": torch.randn(64, 32).to(torch.bfloat16),
        "small.table": torch.arange(10, dtype=torch.float32),
        "converted.weight": torch.randn(512, 512),  # read, then converted: not held any more
    }
    save_file(tensors, str(blob))
    path = tmp_path / "model.safetensors"
    path.symlink_to(blob)
    module = _module_from(path)
    assert _mapped_bytes(path) >= path.stat().st_size  # the whole file, pinned by two small views
    monkeypatch.setattr(w, "SPAN_MIN_BYTES", 1024)  # the stretch the two lie in counts as large here
    assert w.release_file_views(module, [path]) == 3
    # The stretch of the file they lie in is mapped on its own (not the converted weight's
    # bytes): the file's map of the whole is gone.
    assert 0 < _mapped_bytes(path) < path.stat().st_size // 4
    embed = module.embed.weight
    assert torch.equal(embed, tensors["embed.weight"]) and embed.dtype == torch.bfloat16
    assert isinstance(module.embed.weight, nn.Parameter) and not module.embed.weight.requires_grad
    assert torch.equal(module.small.table, tensors["small.table"])
    assert module.small.tied is module.embed.weight
    flat = module.small.flat
    assert flat.shape == (64 * 32,) and flat.data_ptr() == embed.data_ptr()  # still one memory
    assert w.release_file_views(module, [path]) == 0  # nothing left to move: the own map is not the file's
    del module, embed, flat  # the stretch's map goes with them
    module = _module_from(path)
    monkeypatch.setattr(w, "SPAN_MIN_BYTES", 1 << 40)  # every stretch small: copies, no map at all
    assert w.release_file_views(module, [path]) == 3 and _mapped_bytes(path) == 0
    assert (
        torch.equal(module.embed.weight, tensors["embed.weight"]) and module.small.tied is module.embed.weight
    )


def test_a_file_still_mostly_in_use_keeps_its_map(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"embed.weight": torch.randn(512, 64), "small.table": torch.arange(10.0)}, str(path))
    module = _module_from(path)
    before = module.embed.weight
    assert w.release_file_views(module, [path]) == 0  # weights kept as stored: zero-copy as before
    assert module.embed.weight is before and _mapped_bytes(path) > 0


def test_an_int8_engine_holds_no_map_of_its_checkpoint_and_speaks_as_before(
    tiny_checkpoint, ref_wav, monkeypatch
) -> None:
    import utter.engine.engine as engine_module
    from utter.engine.engine import Engine

    def speak(engine: Engine):
        voice = engine.create_voice(str(ref_wav), ref_text=REF_TEXT)
        return engine.generate("Maps closed.", voice, "English", GenerationOptions(seed=3, max_frames=6))

    def maps() -> tuple[int, int]:
        """(maps of the whole checkpoint, bytes of smaller maps of it)"""
        whole = w._mapped_ranges(file, whole=True)
        return len(whole), _mapped_bytes(file) - sum(hi - lo for lo, hi in whole)

    file = tiny_checkpoint / "model.safetensors"
    whole, parts = maps()  # other tests' engines of this checkpoint may hold maps
    same = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8")
    # At tiny sizes the text embedding is most of the file: its map is kept (at 0.6B, a third).
    assert maps() == (whole + 1, parts)
    audio = speak(same)
    monkeypatch.setattr(w, "KEEP_MAP_SHARE", 1.0)  # as at real sizes: most of the file is stale
    monkeypatch.setattr(w, "SPAN_MIN_BYTES", 1 << 40)  # copies only
    kept = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8")
    assert maps() == (whole + 1, parts)  # no new map: what it still uses was copied
    assert (speak(kept) == audio).all()
    monkeypatch.setattr(w, "SPAN_MIN_BYTES", 1024)  # stretches of the file mapped on their own
    monkeypatch.setattr(w, "SPAN_GAP_BYTES", 1)  # one per tensor, none across converted weights
    own = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8")
    embedding = own.weights.talker.model.text_embedding.weight.nbytes
    assert maps()[0] == whole + 1 and embedding < maps()[1] - parts < file.stat().st_size
    assert (speak(own) == audio).all()
    monkeypatch.setattr(engine_module, "release_file_views", lambda *args: 0)  # as before this change
    pinned = Engine.load(str(tiny_checkpoint), device="cpu", weight_mode="int8")
    assert maps()[0] == whole + 2  # what the release prevents: the whole file held for good
    assert (speak(pinned) == audio).all()


def test_a_module_with_no_tensor_on_the_cpu_reads_no_maps(tmp_path, monkeypatch):
    """A GPU load (here: tensors on the meta device) has nothing mapped to let go: the release
    returns before it reads /proc (a read that would only add to a GPU's cold start)."""

    def no_read(*args, **kwargs):
        raise AssertionError("/proc/self/maps was read")

    monkeypatch.setattr(w, "_mapped_ranges", no_read)
    with torch.device("meta"):
        module = torch.nn.Linear(8, 8)
    assert w.release_file_views(module, [tmp_path / "model.safetensors"]) == 0
