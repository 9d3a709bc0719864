"""Every CPU kernel checked at the ISA levels this machine can pretend to be.

CI and developers' machines come with AVX-512, VNNI and AMX, or with AVX2 only; a kernel that is
right on one can be wrong on the other (oneDNN's and fbgemm's AVX2 int8 paths sum in 16 bits and
saturate). The libraries can be capped below what the CPU has (``ONEDNN_MAX_CPU_ISA``,
``FBGEMM_ENABLE_INSTRUCTIONS``) and our native kernels built for another target
(``UTTER_NATIVE_MARCH``), so the AVX2-only paths run here too, in a fresh process (the caps are
read once, at the libraries' first use).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utter.engine.cpu.isa import _cpu_flags, fbgemm_available
from utter.engine.cpu.quant import int8_kernel

ROOT = Path(__file__).resolve().parent.parent

AVX2_ONLY = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    "UTTER_NATIVE_MARCH": "x86-64-v3",  # AVX2 + FMA + F16C, no AVX-512
}

PROBE = """
import json
from utter.engine.cpu import native
import torch
from utter.engine.cpu.isa import fast_bfloat16, fbgemm_full_range, onednn_int8_input
from utter.engine.cpu.quant import int8_kernel, native_max_batch
lib = native.library()
print(json.dumps({
    "fast_bfloat16": fast_bfloat16(torch.device("cpu")),
    "onednn_input": str(onednn_int8_input()),
    "fbgemm_full_range": fbgemm_full_range(),
    "serving": int8_kernel("cpu", max_batch=16),
    "lanes": lib.utter_lanes() if lib is not None else None,
    "native_rows": native_max_batch(),
}))
"""

pytestmark = pytest.mark.skipif(
    not {"avx2", "fma", "f16c"} <= _cpu_flags() or not fbgemm_available(),
    reason="needs an x86-64 CPU with AVX2 and a torch build with fbgemm",
)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **AVX2_ONLY, "UTTER_KERNEL_CACHE": str(tmp_path / "kernels")}


def test_an_avx2_only_cpu_serves_int8_with_kernels_that_compute_right(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    # Capped to AVX2, oneDNN's int8 product saturates and fbgemm's needs 7-bit inputs: both are
    # detected on the kernels themselves, and batches are served by fbgemm. No bfloat16 codec:
    # oneDNN capped below bfloat16 products runs it in its reference code (100x slower).
    assert probe == {
        "fast_bfloat16": False,
        "onednn_input": "None",
        "fbgemm_full_range": False,
        "serving": "fbgemm",
        "lanes": 8,
        "native_rows": 8,  # 8-float vectors: the native kernels serve up to 8 rows, not 16
    }


def test_a_onednn_cap_below_bfloat16_keeps_the_codec_in_float32(monkeypatch, tiny_checkpoint) -> None:
    import torch

    from utter.engine.cpu.isa import fast_bfloat16
    from utter.engine.engine import _load_codec

    cpu = torch.device("cpu")
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    native_bf16 = fast_bfloat16(cpu)
    assert native_bf16 == bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    expected = torch.bfloat16 if native_bf16 else torch.float32  # uncapped: as the CPU has it
    assert _load_codec(tiny_checkpoint, cpu, "int8").dtype == expected
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")  # a cap that keeps them
    assert fast_bfloat16(cpu) == native_bf16
    for cap in ("AVX2", "avx512_core_vnni"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert not fast_bfloat16(cpu)
        assert _load_codec(tiny_checkpoint, cpu, "int8").dtype == torch.float32
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # its older name
    assert not fast_bfloat16(cpu)


def test_the_int8_and_native_tests_pass_at_avx2_level(tmp_path: Path) -> None:
    """The kernel tests themselves, run with AVX2 kernels only (each would fail on a kernel that
    saturates or an AVX2 code path that computes wrong)."""
    selection = "int8 or native or drift or full_range"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection]
    command += ["tests/test_quant.py", "tests/test_native.py", "tests/test_int8_prefill.py"]
    out = subprocess.run(command, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


REFERENCE_PROBE = """
import torch
from torch import nn
from utter.engine.cpu.quant import Int8Linear, int8_kernel
torch.manual_seed(0)
layer = Int8Linear.from_linear(nn.Linear(1024, 3072), int8_kernel("cpu", max_batch=32))
print("kernel", layer.kernel, flush=True)
layer(torch.randn(16, 1024))
"""


@pytest.mark.parametrize("level", ["native", "avx2"])
def test_the_serving_int8_kernel_never_runs_onednn_reference_loops(tmp_path: Path, level: str) -> None:
    """oneDNN answers a product it has no kernel for with its reference loops (right, but 1000x
    slower: 0.55 s for one 16 x 1024 x 3072 product, which made a serving engine on an AVX-512
    CPU without AMX take a minute per frame). Its own log names the implementation it ran."""
    env = {**(_env(tmp_path) if level == "avx2" else os.environ), "ONEDNN_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", REFERENCE_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    kernel = out.stdout.split("kernel ", 1)[1].split()[0]
    # The layer's own product (the kernel choice probes oneDNN at other shapes, reference included).
    lines = out.stdout.splitlines()
    runs = [
        line
        for line in lines
        if ",matmul," in line and line.endswith(",16x1024:1024x3072", 0, line.rfind(","))
    ]
    if kernel == "onednn":
        assert runs, out.stdout[-2000:]
    assert not [line for line in runs if ",ref" in line], runs


ENGINE_PROBE = """
import sys
import torch
from utter.engine.engine import Engine, Request
from utter.engine.sampling import GenerationOptions
from utter.engine.voice import VoicePrompt
from utter.engine.cpu.isa import fbgemm_full_range, onednn_int8_input
onednn_int8_input(), fbgemm_full_range()  # the kernel checks (which run the reference) come first
print("checked", flush=True)
for mode in sys.argv[2:]:
    engine = Engine.load(sys.argv[1], device="cpu", weight_mode=mode, max_batch=32)
    dim = engine.config.talker.decoder.hidden_size
    voice = VoicePrompt(speaker_embedding=torch.randn(dim))
    rows = [Request(f"Row {i} speaks.", voice, "English", GenerationOptions.greedy(3)) for i in range(3)]
    engine.generate_codes(rows)
    print("done", mode, flush=True)
"""


def test_no_weight_mode_runs_onednn_reference_loops(tiny_checkpoint: Path) -> None:
    """Every weight mode's serving engine (batches, a prefill, decode steps) on this CPU, with
    oneDNN's log on: no primitive it runs may be one of its reference implementations."""
    modes = ["float32", "bfloat16", "float16", "int8"]
    out = subprocess.run(
        [sys.executable, "-c", ENGINE_PROBE, str(tiny_checkpoint), *modes],
        env={**os.environ, "ONEDNN_VERBOSE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line.split()[1] for line in out.stdout.splitlines() if line.startswith("done ")] == modes
    # What ran after the kernel checks (which try oneDNN's int8 product, the reference included).
    after = out.stdout.split("\nchecked\n", 1)[1]
    runs = [line for line in after.splitlines() if ",primitive,exec," in line]
    if int8_kernel("cpu", max_batch=32) == "onednn":  # the int8 engine's products are oneDNN's
        assert any(",matmul," in line for line in runs), after[-2000:]
    slow = [line for line in runs if ",ref" in line]
    assert not slow, slow[:5]
