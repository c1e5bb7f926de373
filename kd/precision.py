"""Which precision inference runs in: bf16 autocast where the hardware has native bf16, fp32 elsewhere (Ray-free).

`compute.precision` (evaluation) is `auto`, `fp32` or `bf16`; `resolve_precision` turns it, for one device, into a
`Decision` (the precision used and why). `auto` is bf16 autocast on a CUDA GPU with native bf16 (Ampere or newer)
and on a CPU with native bf16 (the `avx512_bf16` or `amx_bf16` CPU flag), fp32 otherwise. An explicit `bf16` is
honoured everywhere but warns (`PrecisionWarning`) where it is emulated.

Why the CPU flags and not torch's CPU capability (`torch.backends.cpu.get_cpu_capability()`): bf16 matmuls run in
oneDNN, which picks its kernels from the CPU's own features, not from ATen's capability. Measured for one
64x256x384→1536 nn.Linear forward (1 thread, AMD EPYC with avx512_bf16, torch 2.13): fp32 238 ms; bf16 autocast
117 ms natively, 578 ms with oneDNN limited to AVX-512 without bf16 (a CPU that torch still reports as "AVX512"),
1181 ms limited to AVX2; and with ATEN_CPU_CAPABILITY=avx2 (torch reports "AVX2") bf16 stays at 119 ms. So the
capability string is wrong in both directions and only the flags tell whether bf16 is native; the capability is
still named in the reason, as what a user can compare against. Issue 14 measured 3,043 ms bf16 vs 375 ms fp32 for
the same Linear on a 2-core AVX2-only EPYC: about 8x slower.
"""
from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags (as /proc/cpuinfo spells them) of native bf16 math
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: with one set, oneDNN emulates bf16 whatever the flags
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
CPU_BF16_SLOWDOWN = "several times slower than fp32 (about 8x on an AVX2-only CPU)"
CPU_BF16_MEASURED = "one 64x256x384->1536 Linear took 3,043 ms in bf16 vs 375 ms in fp32 on such a CPU"


class PrecisionWarning(UserWarning):
    """bf16 was asked for on hardware that only emulates it."""


@dataclass(frozen=True)
class Decision:
    """The precision a forward pass runs in (`bf16` autocast or `fp32`) and why, in words a user can act on."""

    precision: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def __str__(self) -> str:
        return f"{self.precision} ({self.reason})"

    def as_info(self) -> dict[str, str]:
        """As result info: the result JSON and the evaluation's MLflow params (`info.precision`, `…_reason`)."""
        return {"precision": self.precision, "precision_reason": self.reason}


@functools.lru_cache(maxsize=1)
def this_cpu_flags() -> frozenset[str]:
    """This CPU's feature flags: the kernel's list in /proc/cpuinfo (Linux), else torch's own cpuinfo probes for
    the bf16 features (other systems). Read once per process: `autocast` asks on every batch."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return frozenset(flag for flag, fn in probes.items() if getattr(torch.cpu, fn, lambda: False)())


def _hardware(kind: str, cpu_flags: Iterable[str] | None, cuda_bf16: bool | None) -> tuple[bool | None, str]:
    """(native bf16?, the device in words) for a device type; None: not known (neither CPU nor CUDA). The facts
    default to this machine's."""
    if kind == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False) if cuda_bf16 is None else cuda_bf16
        return native, "CUDA GPU with native bf16" if native else "CUDA GPU without native bf16 (older than Ampere)"
    if kind != "cpu":
        return None, f"{kind} device, whose bf16 support kd does not check"
    flags = this_cpu_flags() if cpu_flags is None else frozenset(cpu_flags)
    have = [f for f in NATIVE_BF16_FLAGS if f in flags]
    seen = "/".join(have) if have else f"no {'/'.join(NATIVE_BF16_FLAGS)} flag"
    if cpu_flags is None:  # this machine: name what torch reports too, the figure a user would look up first
        seen += f", torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    cap = onednn_isa_cap() if cpu_flags is None else None  # a cap is this process's fact, like its CPU's flags
    if have and cap in ONEDNN_ISAS_WITHOUT_BF16:  # the 578 / 1181 ms rows of the module docstring
        have, seen = [], f"{seen}, but ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN from using it"
    return bool(have), f"CPU {'with' if have else 'without'} native bf16 ({seen})"


def onednn_isa_cap() -> str | None:
    """The user's cap on oneDNN's CPU kernels (`ONEDNN_MAX_CPU_ISA`, or the older `DNNL_MAX_CPU_ISA`), upper-case;
    None when unset. Read at every decision, like oneDNN reads it at start-up."""
    raw = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return raw.strip().upper() if raw and raw.strip() else None


def resolve_precision(requested: str, device: torch.device | str, cpu_flags: Iterable[str] | None = None,
                      cuda_bf16: bool | None = None) -> Decision:
    """The one place that decides evaluation precision: `requested` (auto | fp32 | bf16) on `device`.

    `cpu_flags` (default: this CPU's) and `cuda_bf16` (default: `torch.cuda.is_bf16_supported` without
    emulation) are the hardware facts, injectable so every case is testable on any machine. An explicit `bf16` on
    hardware without native bf16 is kept (the user asked for it) but warns, naming the expected slowdown."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "fp32":
        return Decision("fp32", "fp32 requested")
    kind = torch.device(device).type
    native, what = _hardware(kind, cpu_flags, cuda_bf16)
    if requested == "auto":
        return Decision("bf16" if native else "fp32", f"auto: {what}")
    if native is not False:
        return Decision("bf16", f"bf16 requested, {what}")
    slower = CPU_BF16_SLOWDOWN if kind == "cpu" else "slower than fp32"
    measured = f"; issue 14: {CPU_BF16_MEASURED}" if kind == "cpu" else ""
    warnings.warn(f"precision bf16 on a {what}: bf16 is emulated there, expect it to be {slower}{measured}; use "
                  "precision auto (or fp32)", PrecisionWarning)  # raised here: shown once per process
    return Decision("bf16", f"bf16 requested on a {what}: emulated, {slower}")


__all__ = ["CPU_BF16_MEASURED", "CPU_BF16_SLOWDOWN", "Decision", "NATIVE_BF16_FLAGS", "ONEDNN_ISAS_WITHOUT_BF16",
           "PRECISIONS", "PrecisionWarning",
           "onednn_isa_cap", "resolve_precision", "this_cpu_flags"]
