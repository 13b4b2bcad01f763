"""The CPU's instruction sets, read from /proc/cpuinfo texts of both kinds of machine."""

from __future__ import annotations

from facecheck.backbones import cpu
from facecheck.evaluation.report import machine_description

AVX2_ONLY = "processor : 0\nmodel name : AMD EPYC\nflags : fpu sse4_2 avx avx2 fma\n"
VNNI = (
    "processor : 0\nflags : fpu avx avx2 avx512f avx512dq avx512_vnni avx512_bf16\n\n"
    "processor : 1\nflags : fpu avx avx2\n"
)


def test_flags_and_names_for_both_kinds_of_cpu():
    avx2, vnni = cpu.parse_flags(AVX2_ONLY), cpu.parse_flags(VNNI)
    assert "avx2" in avx2 and "avx512f" not in avx2
    assert {"avx512_vnni", "avx512_bf16"} <= vnni  # the first processor's line
    assert not cpu.has_vnni(avx2) and cpu.has_vnni(vnni)
    assert cpu.has_vnni(frozenset({"avx2", "avx_vnni"}))  # client CPUs' 256-bit VNNI
    assert cpu.instruction_sets(avx2) == "AVX2 only"
    assert cpu.instruction_sets(vnni) == "AVX2, AVX-512 (VNNI, BF16)"
    amx = vnni | {"amx_tile", "amx_int8"}
    assert cpu.instruction_sets(amx) == "AVX2, AVX-512 (VNNI, BF16, AMX, AMX-INT8)"
    assert cpu.has_vnni(frozenset({"amx_int8"}))
    assert cpu.parse_flags("Features : fp asimd\n") == {"fp", "asimd"}  # Arm
    assert cpu.parse_flags("no such line") == frozenset()


def test_the_flags_can_be_set_to_another_cpus(monkeypatch):
    cpu.cpu_flags.cache_clear()
    monkeypatch.setenv("FACECHECK_CPU_FLAGS", "avx avx2")
    try:
        assert not cpu.has_vnni() and cpu.instruction_sets() == "AVX2 only"
        # Every benchmark's machine line names the sets.
        assert "(AVX2 only)" in machine_description()
    finally:
        cpu.cpu_flags.cache_clear()
