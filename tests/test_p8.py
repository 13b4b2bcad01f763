"""Protocol P8, the field-shift matrix: the extra sources, fake families, and splits that
never train on what they hold out (issue 26)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from facecheck.evaluation.data import Dataset, with_extra_sources
from facecheck.evaluation.protocols import (
    P8_CAMERAS,
    P8_FAMILIES,
    SYNTHETIC_FAMILIES,
    NotApplicable,
    all_sources,
    build,
    expand,
)


@pytest.fixture(scope="module")
def with_extra(full_dataset) -> Dataset:
    return with_extra_sources(full_dataset)


def _seen(protocol) -> set[str]:
    return {r.sha256 for part in (protocol.split.train, protocol.split.val) for r in part}


def test_the_extra_sources_load_with_their_families(full_dataset, with_extra):
    assert not {"sfhq_t2i", "celebdf_dfgc"} & {r.source for r in full_dataset}
    counts = with_extra.counts()
    assert counts["sfhq_t2i/fake"] == 1500
    assert counts["celebdf_dfgc/fake"] == 79 and counts["celebdf_dfgc/real"] == 133
    families = {(r.source, r.label): r.family for r in with_extra}
    assert families[("sfhq_t2i", "fake")] == "diffusion"
    assert families[("celebdf_dfgc", "fake")] == "faceswap"
    assert families[("tpdne", "fake")] == families[("fakefaces", "fake")] == "gan"
    assert families[("rff", "fake")] == "photoshop" and families[("rff", "real")] == "real"
    assert with_extra_sources(with_extra) is with_extra  # loaded once


def test_p8_keeps_the_earlier_split_and_tests_the_swap_pair_only(full_dataset):
    assert expand(["P8"])[0] == "P8-SEEN" and len(expand(["P8"])) == 1 + 5 + 2
    seen = build("P8-SEEN", full_dataset, 0)
    before = all_sources(full_dataset, 0).split
    for name in ("train", "val", "test"):
        base = {r.sha256 for r in seen.split[name] if r.source in ("rff", "utkface", "tpdne")}
        assert base == {r.sha256 for r in before[name] if r.source in ("rff", "utkface", "tpdne")}
    # The face-swap video pair is a test, never training; its reals are an unseen camera.
    assert not any(r.source == "celebdf_dfgc" for r in seen.split.train)
    assert not any(r.source == "celebdf_dfgc" for r in seen.split.val)
    swap = seen.test_sets["faceswap-same-source"].counts()
    assert swap == {"celebdf_dfgc/fake": 79, "celebdf_dfgc/real": 133}
    camera = seen.test_sets["camera-celebdf_dfgc"]
    assert {r.source for r in camera if r.label == "real"} == {"celebdf_dfgc"}
    # Diffusion faces are split with the others: some train, some test.
    assert any(r.source == "sfhq_t2i" for r in seen.split.train)
    assert seen.test_sets["diffusion"].counts()["sfhq_t2i/fake"] == 150


def _plant(ds: Dataset, copy_of, **changes) -> tuple[Dataset, str]:
    """``ds`` with a byte-twin of ``copy_of`` filed under another source or label."""
    twin = replace(copy_of, **changes)
    return Dataset([*ds.records, twin], ds.root), copy_of.sha256


# Face swaps and morphs are trainable only as synthetic fakes (tests/test_synthesize.py).
@pytest.mark.parametrize("family", [f for f in P8_FAMILIES if f not in SYNTHETIC_FAMILIES])
def test_leave_one_family_out_never_trains_on_it(with_extra, family):
    held = next(r for r in with_extra if r.family == family)
    # A copy of a held-out fake filed as another family's fake must not train either.
    other = "sfhq_t2i" if family != "diffusion" else "tpdne"
    planted, digest = _plant(with_extra, held, source=other)
    protocol = build(f"P8-LOFO-{family.upper()}", planted, 0)
    seen = _seen(protocol)
    assert digest not in seen
    assert not any(
        r.family == family for part in (protocol.split.train, protocol.split.val) for r in part
    )
    held_out = protocol.test_sets["held-out"]
    assert sum(r.family == family for r in held_out) == sum(r.family == family for r in with_extra)
    assert {r.label for r in held_out} == {"real", "fake"}


@pytest.mark.parametrize("camera", P8_CAMERAS)
def test_leave_one_camera_out_never_fits_on_its_reals(with_extra, camera):
    held = next(r for r in with_extra if r.source == camera and r.label == "real")
    other = "utkface" if camera == "rff" else "rff"
    planted, digest = _plant(with_extra, held, source=other)
    protocol = build(f"P8-CAMERA-{camera.upper()}", planted, 0)
    assert digest not in _seen(protocol)
    for part in (protocol.split.train, protocol.split.val):  # nor the threshold's reals
        assert not any(r.source == camera and r.label == "real" for r in part)
    unseen = protocol.test_sets["unseen-camera"]
    reals = [r for r in unseen if r.label == "real"]
    assert {r.source for r in reals} == {camera}
    assert len(reals) == sum(r.source == camera and r.label == "real" for r in with_extra)


@pytest.mark.parametrize("family", ["faceswap", "morph"])
def test_synthetic_families_do_not_apply_without_synthetic_fakes(full_dataset, family):
    with pytest.raises(NotApplicable, match="synthesize"):
        build(f"P8-LOFO-{family.upper()}", full_dataset, 0)
