"""Builders for the evaluation protocols of ``../shared/notes/protocols.md``.

A protocol is a train/val/test split plus the named test sets its figures are reported on.
The *headline* test set is the honest one: where the classes come from different sources
(so a model could tell them apart by source alone), it is the same-source subset, and the
mixed-source figure is kept beside it, labelled source-biased.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from facecheck.evaluation.data import (
    SPLITS,
    Dataset,
    Record,
    Split,
    draw,
    split_by_hash,
    with_extra_sources,
)

# The source of the Photoshop-edited images; every other fake source is a generator (GAN).
EDITED_SOURCE = "rff"
# Thesis approach 2: 90 edited fakes against all 1,081 rff reals.
P2_FAKES = 90
# Thesis approach 3 at its realistic ratio: 212 reals per fake.
P3_RATIO = 212


@dataclass
class Protocol:
    """A named split plus the test sets it reports, headline first."""

    name: str
    title: str
    split: Split
    test_sets: dict[str, Dataset]
    headline: str
    source_biased: set[str] = field(default_factory=set)
    seed: int = 0

    def describe(self) -> dict[str, object]:
        return {
            "protocol": self.name,
            "title": self.title,
            "seed": self.seed,
            "splits": self.split.sizes(),
            "test_sets": {k: v.counts() for k, v in self.test_sets.items()},
            "headline": self.headline,
            "source_biased": sorted(self.source_biased),
        }


def _rff(ds: Dataset) -> tuple[Dataset, Dataset]:
    return ds.where(label="real", source=EDITED_SOURCE), ds.where(
        label="fake", source=EDITED_SOURCE
    )


def generated(ds: Dataset) -> Dataset:
    """Generated (GAN) fakes: every fake that is not from the Photoshop-edited source."""
    return ds.subset(r for r in ds if r.label == "fake" and r.source != EDITED_SOURCE)


def p1(ds: Dataset, seed: int = 0) -> Protocol:
    """P1: balanced photoshop detection, rff real vs rff fake (one source)."""
    real, fake = _rff(ds)
    split = split_by_hash(ds.subset(real.records + fake.records), seed=seed)
    return Protocol(
        "P1",
        "rff real vs rff Photoshop fake (balanced, same source)",
        split,
        {"same-source": split.test},
        "same-source",
        seed=seed,
    )


def p2(ds: Dataset, seed: int = 0) -> Protocol:
    """P2: imbalanced photoshop detection, all rff reals vs a seeded draw of 90 rff fakes."""
    real, fake = _rff(ds)
    # A small dataset (tests, subsets) has fewer fakes than the protocol's 90: take them all.
    fakes = draw(fake.records, min(P2_FAKES, len(fake)), seed=seed)
    split = split_by_hash(ds.subset(real.records + fakes), seed=seed)
    return Protocol(
        "P2",
        f"rff real vs {P2_FAKES} rff fakes (about 1:12, same source)",
        split,
        {"same-source": split.test},
        "same-source",
        seed=seed,
    )


def _p3(ds: Dataset, seed: int, n_fakes: int | None, name: str, title: str) -> Protocol:
    reals = ds.where(label="real")
    fakes = ds.where(label="fake", source=EDITED_SOURCE).records
    if n_fakes is not None:
        fakes = draw(fakes, n_fakes, seed=seed)
    split = split_by_hash(ds.subset(reals.records + fakes), seed=seed)
    same = split.test.where(source=EDITED_SOURCE)
    return Protocol(
        name,
        title,
        split,
        {"same-source": same, "mixed-source": split.test},
        "same-source",
        source_biased={"mixed-source"},
        seed=seed,
    )


def p3(ds: Dataset, seed: int = 0) -> Protocol:
    """P3: all reals (rff + utkface) vs all rff fakes, about 1:11; headline on rff-only test."""
    return _p3(
        ds,
        seed,
        None,
        "P3",
        "all reals (rff + utkface) vs rff fakes (about 1:11); headline on rff test images",
    )


def p3_212(ds: Dataset, seed: int = 0) -> Protocol:
    """P3 at the thesis's 1:212 ratio: fakes drawn (seeded) so reals/fakes is about 212."""
    n_reals = len(ds.where(label="real"))
    return _p3(
        ds,
        seed,
        max(1, round(n_reals / P3_RATIO)),
        "P3-212",
        "all reals vs rff fakes drawn to 1:212; headline on rff test images",
    )


def p4(ds: Dataset, seed: int = 0) -> Protocol:
    """P4: GAN-generated faces vs all reals. Cross-source by construction."""
    reals = ds.where(label="real")
    split = split_by_hash(ds.subset(reals.records + generated(ds).records), seed=seed)
    test = split.test
    sets = {
        "gan-vs-rff-real": test.subset(r for r in test if r.label == "fake" or r.source == "rff"),
        "all": test,
    }
    return Protocol(
        "P4",
        "GAN-generated faces vs all reals (different sources by construction)",
        split,
        sets,
        "gan-vs-rff-real",
        source_biased=set(sets),
        seed=seed,
    )


def all_sources(ds: Dataset, seed: int = 0) -> Protocol:
    """Every image: what the shipped default detector trains on; reported per test subset."""
    split = split_by_hash(ds, seed=seed)
    test = split.test
    sets = {
        "rff-same-source": test.where(source=EDITED_SOURCE),
        "gan-vs-rff-real": test.subset(
            r
            for r in test
            if (r.source == EDITED_SOURCE and r.label == "real")
            or (r.label == "fake" and r.source != EDITED_SOURCE)
        ),
        "all": test,
    }
    return Protocol(
        "ALL",
        "all reals vs all fakes (edited and generated)",
        split,
        sets,
        "rff-same-source",
        source_biased={"gan-vs-rff-real", "all"},
        seed=seed,
    )


def _leave_one_out(
    ds: Dataset,
    seed: int,
    *,
    name: str,
    title: str,
    pool: list[Record],
    held_out: list[Record],
    same_source: bool,
) -> Protocol:
    """Split ``pool`` by hash as usual; test on the split's test part (in-source) and on the
    held-out records joined with the test part's other class (out-of-source)."""
    split = split_by_hash(ds.subset(pool), seed=seed)
    seen = {r.sha256 or str(r.path) for part in (split.train, split.val) for r in part}
    leaked = [r for r in held_out if (r.sha256 or str(r.path)) in seen]
    if leaked:  # by construction this cannot happen; a duplicate across sources could
        raise AssertionError(f"{name}: {len(leaked)} held-out images are in train/val")
    label = held_out[0].label
    other = [r for r in split.test if r.label != label]
    sets = {"out-of-source": ds.subset(held_out + other), "in-source": split.test}
    return Protocol(
        name,
        title,
        split,
        sets,
        "out-of-source",
        source_biased=set() if same_source else set(sets),
        seed=seed,
    )


def _source(ds: Dataset, source: str, label: str) -> list[Record]:
    return ds.where(label=label, source=source).records


def p7_gan(held: str, kept: str) -> Callable[[Dataset, int], Protocol]:
    def build_(ds: Dataset, seed: int = 0) -> Protocol:
        return _leave_one_out(
            ds,
            seed,
            name=f"P7-{held.upper()}",
            title=f"generated faces: trained on {kept}, tested on unseen {held} (all reals)",
            pool=ds.where(label="real").records + _source(ds, kept, "fake"),
            held_out=_source(ds, held, "fake"),
            same_source=False,
        )

    return build_


def p7_hard(ds: Dataset, seed: int = 0) -> Protocol:
    """Photoshop edits: trained on easy + mid, tested on the unseen hard ones (rff reals)."""
    real, fake = _rff(ds)
    return _leave_one_out(
        ds,
        seed,
        name="P7-HARD",
        title="Photoshop edits: trained on easy+mid, tested on unseen hard (rff reals)",
        pool=real.records + [r for r in fake if r.difficulty in ("easy", "mid")],
        held_out=[r for r in fake if r.difficulty == "hard"],
        same_source=True,
    )


def p7_real(held: str, kept: str) -> Callable[[Dataset, int], Protocol]:
    def build_(ds: Dataset, seed: int = 0) -> Protocol:
        return _leave_one_out(
            ds,
            seed,
            name=f"P7-{held.upper()}",
            title=f"real faces: trained on {kept} reals, tested on unseen {held} reals "
            "(generated fakes)",
            pool=_source(ds, kept, "real") + generated(ds).records,
            held_out=_source(ds, held, "real"),
            same_source=False,
        )

    return build_


# --------------------------------------------------------------------------- P8
# One face-swap video pair: a test, never training (../shared/data/README.md).
TEST_ONLY_SOURCES = frozenset({"celebdf_dfgc"})
# Fake families P8 holds out one at a time. The face-swap video is a test only, so face
# swaps and morphs are trained on only as synthetic fakes (``facecheck synthesize``); without
# them their leave-one-out protocols do not apply. Self-blends are a training device, never
# a family held out.
P8_FAMILIES = ("gan", "diffusion", "photoshop", "faceswap", "morph")
SYNTHETIC_FAMILIES = frozenset({"faceswap", "morph", "self_blend"})


class NotApplicable(ValueError):
    """The protocol has nothing to measure on this data (e.g. no synthetic morphs)."""


# Real sources ("cameras") P8 holds out one at a time; test-only ones are always unseen.
P8_CAMERAS = ("rff", "utkface")


def _p8_split(ds: Dataset, seed: int) -> tuple[Dataset, Split]:
    """``ds`` with the extra sources beside its manifest, split so that ``ds``'s own
    records fall exactly as in the earlier protocols (ALL's split), the extra trainable
    sources are split by hash on their own, and test-only sources go to test whole."""
    own = {r.source for r in ds if not r.parents}
    ds = with_extra_sources(ds)
    made = [r for r in ds if r.parents]  # synthetic fakes: they follow their parents
    ds_ = ds.subset(r for r in ds if not r.parents)
    base = ds_.subset(r for r in ds_ if r.source in own and r.source not in TEST_ONLY_SOURCES)
    added = ds_.subset(r for r in ds_ if r.source not in own | TEST_ONLY_SOURCES)
    test_only = [r for r in ds_ if r.source in TEST_ONLY_SOURCES]
    parts = [split_by_hash(base, seed=seed)]
    if len(added):  # fakes only (sfhq_t2i): split by hash, stratified by source
        parts.append(split_by_hash(added, seed=seed, one_class=True))
    where = {r.sha256: name for part in parts for name in SPLITS for r in part[name]}
    where.update({r.sha256: "test" for r in test_only})
    follow: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for r in made:
        homes = {where.get(h) for h in r.parents}
        if len(homes) != 1 or None in homes:
            raise ValueError(
                f"{r.path.name}: its parents are in splits {sorted(map(str, homes))}, not one "
                f"(made for another seed than {seed}? run `facecheck synthesize --seed {seed}`)"
            )
        follow[homes.pop()].append(r)  # type: ignore[index]

    def joined(name: str) -> Dataset:
        records = [r for part in parts for r in part[name]] + follow[name]
        return ds.subset(records + (test_only if name == "test" else []))

    return ds, Split(joined("train"), joined("val"), joined("test"))


def _without(split: Split, drop: Callable[[Record], bool], ds: Dataset) -> Split:
    """The split with ``drop``'s records, and every byte-identical copy of them (by content
    hash, whatever its source or label), taken out of train and val."""
    held = {r.sha256 for part in (split.train, split.val, split.test) for r in part if drop(r)}

    def keep(part: Dataset) -> Dataset:
        return ds.subset(r for r in part if r.sha256 not in held)

    return Split(keep(split.train), keep(split.val), split.test)


def _assert_unseen(name: str, split: Split, held_out: list[Record]) -> None:
    """No held-out image (nor a byte-twin of one) in train or val."""
    seen = {r.sha256 for part in (split.train, split.val) for r in part}
    leaked = [r for r in held_out if r.sha256 in seen]
    if leaked:
        raise AssertionError(f"{name}: {len(leaked)} held-out images are in train/val")


def _family_sets(ds: Dataset, test: Dataset, reals: list[Record]) -> dict[str, Dataset]:
    """Per fake family in ``test``: its fakes against ``reals`` (the test reals of the
    sources trained on); the face-swap pair also against its own video's reals."""
    sets = {}
    for family in sorted({r.family for r in test if r.label == "fake"}):
        fakes = [r for r in test if r.family == family and r.label == "fake"]
        sets[family] = ds.subset(fakes + reals)
        same = [r for r in test if r.label == "real" and r.source in {f.source for f in fakes}]
        if same and family != "photoshop":
            sets[f"{family}-same-source"] = ds.subset(fakes + same)
    return sets


def p8_seen(ds: Dataset, seed: int = 0) -> Protocol:
    """P8, every trainable source in training: recall and FPR per fake family on test (the
    families "seen in training" of the goals), the rff same-source headline, the face-swap
    pair (never trained on), and the share of an unseen camera's reals flagged."""
    ds, split = _p8_split(ds, seed)
    test = split.test
    trained = {r.source for r in split.train if r.label == "real"}
    reals = [r for r in test if r.label == "real" and r.source in trained]
    sets = {"rff-same-source": test.where(source=EDITED_SOURCE)}
    sets.update(_family_sets(ds, test, reals))
    for source in sorted({r.source for r in test if r.label == "real"} - trained):
        fakes = [r for r in test if r.label == "fake" and r.source not in TEST_ONLY_SOURCES]
        sets[f"camera-{source}"] = ds.subset(
            [r for r in test if r.source == source and r.label == "real"] + fakes
        )
    _assert_unseen("P8-SEEN", split, [r for r in test if r.source in TEST_ONLY_SOURCES])
    return Protocol(
        "P8-SEEN",
        "field shift: every trainable source in training; each family, the face-swap pair "
        "and unseen cameras at the threshold",
        split,
        sets,
        "rff-same-source",
        # Synthetic fakes are made from the test reals' own cameras: not source-biased.
        source_biased={
            k
            for k in sets
            if k not in ("rff-same-source", "faceswap-same-source", *SYNTHETIC_FAMILIES)
        },
        seed=seed,
    )


def p8_family(held: str) -> Callable[[Dataset, int], Protocol]:
    """P8, leave one fake family out: trained without any fake of ``held`` (nor a copy of
    one), tested on all of them against the test reals."""

    def build_(ds: Dataset, seed: int = 0) -> Protocol:
        ds, split = _p8_split(ds, seed)
        split = _without(split, lambda r: r.family == held, ds)
        held_out = [r for r in ds if r.family == held]
        if held in SYNTHETIC_FAMILIES and not any(r.parents for r in held_out):
            raise NotApplicable(
                f"P8-LOFO-{held.upper()}: no synthetic {held} fakes (run `facecheck synthesize` "
                "and pass --synthetic)"
            )
        if not held_out:
            raise NotApplicable(f"P8-LOFO-{held.upper()}: no {held} fakes in the data")
        _assert_unseen(f"P8-LOFO-{held.upper()}", split, held_out)
        trained = {r.source for r in split.train if r.label == "real"}
        reals = [r for r in split.test if r.label == "real" and r.source in trained]
        others = [r for r in split.test if r.label == "fake" and r.family != held]
        sets = {"held-out": ds.subset(held_out + reals)}
        if held == "photoshop":  # the Photoshop edits have their own camera's reals
            sets["held-out-same-source"] = ds.subset(
                held_out + [r for r in reals if r.source == EDITED_SOURCE]
            )
        sets["in-family"] = ds.subset(others + reals)
        return Protocol(
            f"P8-LOFO-{held.upper()}",
            f"field shift: trained without {held} fakes, tested on all of them",
            split,
            sets,
            "held-out-same-source" if held == "photoshop" else "held-out",
            source_biased={"held-out", "in-family"},
            seed=seed,
        )

    return build_


def p8_camera(held: str) -> Callable[[Dataset, int], Protocol]:
    """P8, leave one camera out: ``held``'s reals are in neither training nor threshold
    fitting; the figure is the share of them flagged at the threshold."""

    def build_(ds: Dataset, seed: int = 0) -> Protocol:
        ds, split = _p8_split(ds, seed)
        held_out = [r for r in ds if r.source == held and r.label == "real"]
        # Fakes made from the held-out camera's photos carry that camera too: out with them.
        camera = {r.sha256 for r in held_out}
        split = _without(
            split,
            lambda r: (r.source == held and r.label == "real") or bool(camera & set(r.parents)),
            ds,
        )
        _assert_unseen(f"P8-CAMERA-{held.upper()}", split, held_out)
        fakes = [r for r in split.test if r.label == "fake" and r.source not in TEST_ONLY_SOURCES]
        trained = {r.source for r in split.train if r.label == "real"}
        reals = [r for r in split.test if r.label == "real" and r.source in trained]
        sets = {
            "unseen-camera": ds.subset(held_out + fakes),
            "seen-cameras": ds.subset(reals + fakes),
        }
        return Protocol(
            f"P8-CAMERA-{held.upper()}",
            f"field shift: {held} reals never seen (training or threshold)",
            split,
            sets,
            "unseen-camera",
            source_biased=set(sets),
            seed=seed,
        )

    return build_


PROTOCOLS: dict[str, Callable[[Dataset, int], Protocol]] = {
    "P1": p1,
    "P2": p2,
    "P3": p3,
    "P3-212": p3_212,
    "P4": p4,
    "ALL": all_sources,
    # P7, leave one source out: the held-out source is never in train or val.
    "P7-TPDNE": p7_gan("tpdne", "fakefaces"),
    "P7-FAKEFACES": p7_gan("fakefaces", "tpdne"),
    "P7-HARD": p7_hard,
    "P7-UTKFACE": p7_real("utkface", "rff"),
    "P7-RFF": p7_real("rff", "utkface"),
    # P8, the field-shift matrix (with ``--perturb p8`` for its processing chains).
    "P8-SEEN": p8_seen,
    **{f"P8-LOFO-{f.upper()}": p8_family(f) for f in P8_FAMILIES},
    **{f"P8-CAMERA-{c.upper()}": p8_camera(c) for c in P8_CAMERAS},
}
# Names that stand for several protocols.
GROUPS = {p: [k for k in PROTOCOLS if k.startswith(f"{p}-")] for p in ("P7", "P8")}


def expand(names: list[str]) -> list[str]:
    """Protocol names with groups (P7) replaced by their members, order kept."""
    out: list[str] = []
    for n in names:
        for m in GROUPS.get(n.upper(), [n]):
            if m not in out:
                out.append(m)
    return out


def build(name: str, ds: Dataset, seed: int = 0) -> Protocol:
    """Build protocol ``name`` (case-insensitive) on ``ds``."""
    key = name.upper()
    if key not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    if not key.startswith("P8") and any(r.parents for r in ds):
        # Synthetic fakes are P8's; the earlier protocols' figures stay as they were.
        ds = ds.subset(r for r in ds if not r.parents)
    return PROTOCOLS[key](ds, seed)
