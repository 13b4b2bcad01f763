"""What this CPU can do: the instruction sets that decide which numeric kernels run.

ONNX Runtime's and PyTorch's kernels differ by instruction set, and so do some results: the
u8 x s8 integer products of a CPU without VNNI add pairs of products in int16 and saturate,
while VNNI (AVX-512 VNNI or AVX-VNNI) and AMX widen first and are exact. So every speed
figure names these sets (:func:`instruction_sets`), and a quantised path that is exact only
on some CPUs is chosen by :func:`has_vnni`, never assumed. No imports beyond the standard
library: this module sits below everything that runs a model.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# /proc/cpuinfo flag -> the name a person knows it by, in the order they are listed.
_NAMED = {
    "avx2": "AVX2",
    "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512",
    "avx512_vnni": "VNNI",
    "avx512_bf16": "BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor listed in a /proc/cpuinfo text (x86's
    ``flags`` line, Arm's ``Features``); empty when there is none."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (Linux), read once; empty elsewhere.

    ``FACECHECK_CPU_FLAGS`` (space-separated) replaces them, so the choice that depends on
    them can be tried as another CPU would make it."""
    override = os.environ.get("FACECHECK_CPU_FLAGS")
    if override is not None:
        return frozenset(override.split())
    try:
        return parse_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether 8-bit products u8 x s8 are exact here (VNNI or AMX), not saturated (AVX2)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def instruction_sets(flags: frozenset[str] | None = None) -> str:
    """The sets that decide speed and integer exactness, e.g. "AVX2, AVX-512 (VNNI, BF16)"
    or "AVX2 only" (or the machine's architecture where no flags are known)."""
    flags = cpu_flags() if flags is None else flags
    named = [name for flag, name in _NAMED.items() if flag in flags]
    if not named:
        return platform.machine() or "unknown instruction sets"
    if "AVX-512" not in named:
        return ", ".join(named) + (" only" if named == ["AVX2"] else "")
    base = [n for n in named if n in ("AVX2", "AVX-VNNI")]
    wide = [n for n in named if n not in base and n != "AVX-512"]
    return ", ".join([*base, "AVX-512" + (f" ({', '.join(wide)})" if wide else "")])


def cpu_name() -> str:
    """The processor's model name (Linux), or what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), so a bf16 pass
    is faster than fp32 rather than emulated."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(requested: str | None = None) -> str:
    """The compute precision of a backbone pass on this CPU, "fp32" or "bf16".

    ``requested`` None reads ``FACECHECK_PRECISION`` (default "auto"); "auto" takes bf16
    where the CPU has it natively (:func:`has_bf16`), fp32 elsewhere."""
    choice = requested or os.environ.get("FACECHECK_PRECISION") or "auto"
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {choice!r}")
    if choice == "auto":
        return "bf16" if has_bf16() else "fp32"
    return choice
