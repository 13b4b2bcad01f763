"""Datasets of labelled face images: loading, content hashes, duplicates and splits.

A dataset is a list of :class:`Record` (path, label, source, sha256). Splits are made over
*unique content hashes*, so an image and its byte-identical copies always land in the same
split, and are stratified by label and source with a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from facecheck.image.decode import IMAGE_SUFFIXES
from facecheck.image.regions import REGIONS

LABELS = ("real", "fake")
SPLITS = ("train", "val", "test")
# The ciplab (rff) edited images: difficulty_number_bits, bits = left eye, right eye, nose, mouth.
# What the images in ../shared/data are and under which terms (from its README): the model
# card of any detector trained on them repeats this.
KNOWN_SOURCES = {
    "rff": "Kaggle 'Real and Fake Face Detection' (ciplab, Yonsei Univ.): real photos and "
    "Photoshop edits; dataset terms: research use",
    "utkface": "UTKFace 'crop_part1' real faces; non-commercial research only",
    "tpdne": "GAN faces from thispersondoesnotexist (StyleGAN2); terms unstated",
    "fakefaces": "AI-generated faces, public 'fakefaces' collection (generator not stated); "
    "GPL-3.0",
    "sfhq_t2i": "text-to-image faces (SDXL, FLUX.1, DALL-E 3) from SFHQ-T2I (Beniaguev 2024), "
    "tiles of its README figures; repository MIT, the generators' terms apply",
    "celebdf_dfgc": "Celeb-DF v2 face-swap video id0_id16_0000 and its real source frames, plus "
    "one YouTube-real video; non-commercial research only",
}


def source_terms(source: str) -> str:
    """What a source is and its terms (a synthetic one: those of the camera it was made from)."""
    if source in KNOWN_SOURCES:
        return KNOWN_SOURCES[source]
    kind, _, camera = source.partition("_")
    if kind in ("morph", "swap", "sbi") and camera in KNOWN_SOURCES:
        return (
            f"synthetic {kind} fakes made by `facecheck synthesize` from {camera}'s reals; "
            f"their terms: {KNOWN_SOURCES[camera]}"
        )
    return "unknown source"


# The fake families of protocol P8, by source (reals are family "real"). Synthetic fakes made
# from the reals (morphs, self-blends, swaps) carry their own family when generated.
FAMILIES = {
    "rff": "photoshop",
    "tpdne": "gan",
    "fakefaces": "gan",
    "sfhq_t2i": "diffusion",
    "celebdf_dfgc": "faceswap",
}
# ../shared/data/manifest-extra.jsonl: sources added in round 2, loaded on request only (the
# earlier protocols' splits and figures stay as they were).
EXTRA_MANIFEST = "manifest-extra.jsonl"
_RFF_NAME = re.compile(r"^(easy|mid|hard)_(\d+)_([01]{3,4})$")


@dataclass(frozen=True)
class Record:
    """One labelled image. ``sha256`` is filled by :func:`with_hashes`."""

    path: Path
    label: str
    source: str = "unknown"
    sha256: str = ""
    # Group labels a manifest supplies (its "groups" column, e.g. {"gender": "female"}), as
    # sorted (attribute, value) pairs; for reporting equal treatment only, never deciding.
    groups: tuple[tuple[str, str], ...] = ()
    # A synthetic fake's parents (the content hashes of the reals it was made from): it
    # goes wherever they go in a split, and out of training with their camera.
    parents: tuple[str, ...] = ()
    # The fake's family where the manifest states it (synthetic fakes); else by source.
    fake_family: str = ""

    @property
    def y(self) -> int:
        """1 for fake (the positive class), 0 for real."""
        return int(self.label == "fake")

    @property
    def family(self) -> str:
        """ "real", or the fake's family (gan, diffusion, faceswap, photoshop, ...)."""
        if self.label == "real":
            return "real"
        return self.fake_family or FAMILIES.get(self.source, "unknown")

    @property
    def difficulty(self) -> str | None:
        """easy/mid/hard for the rff edited images, else None."""
        m = _RFF_NAME.match(self.path.stem)
        return m.group(1) if m else None

    @property
    def regions(self) -> tuple[int, int, int, int] | None:
        """Replaced (1) or not: left eye, right eye, nose, mouth, from an rff fake's name.

        None for reals and for the one rff name with three bits (ambiguous: which region
        is missing is not stated).
        """
        m = _RFF_NAME.match(self.path.stem)
        if not m or len(m.group(3)) != 4:
            return None
        return tuple(int(b) for b in m.group(3))  # type: ignore[return-value]


@dataclass
class Dataset:
    """An ordered collection of records plus where it came from."""

    records: list[Record]
    root: Path | None = None
    duplicates: dict[str, list[Path]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    @property
    def y(self) -> np.ndarray:
        return np.array([r.y for r in self.records], dtype=np.int64)

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.records]

    @property
    def hashes(self) -> list[str]:
        return [r.sha256 for r in self.records]

    @property
    def sources(self) -> np.ndarray:
        return np.array([r.source for r in self.records])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.records:
            out[f"{r.source}/{r.label}"] += 1
        return dict(sorted(out.items()))

    def subset(self, keep: Iterable[Record]) -> Dataset:
        return Dataset(list(keep), self.root, self.duplicates)

    def where(self, *, label: str | None = None, source: str | None = None) -> Dataset:
        return self.subset(
            r
            for r in self.records
            if (label is None or r.label == label) and (source is None or r.source == source)
        )

    def fingerprints(self) -> tuple[str, str | None]:
        """The fingerprint of the data's own images and that of its synthetic fakes (None
        without any): a bundle records both, so it can be checked without the synthetic set."""
        made = [r for r in self.records if r.parents]
        own = self.subset(r for r in self.records if not r.parents).fingerprint()
        return own, self.subset(made).fingerprint() if made else None

    def fingerprint(self) -> str:
        """Hash of the (sorted) content hashes and labels: names the training data in a bundle."""
        h = hashlib.sha256()
        for digest, label in sorted((r.sha256, r.label) for r in self.records):
            h.update(f"{digest}:{label}\n".encode())
        return h.hexdigest()


def load_manifest(path: str | Path) -> Dataset:
    """Load `manifest.jsonl` lines `{"path", "label", "source"}`; paths relative to its folder."""
    path = Path(path)
    root = path.parent
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            label = row["label"]
            rel = row["path"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: bad manifest line ({exc})") from exc
        if label not in LABELS:
            raise ValueError(f"{path}:{lineno}: label must be one of {LABELS}, got {label!r}")
        groups = row.get("groups") or {}
        if not isinstance(groups, dict):
            raise ValueError(f"{path}:{lineno}: groups must be an object, got {groups!r}")
        parents = row.get("parents") or []
        if not isinstance(parents, list) or not all(isinstance(h, str) for h in parents):
            raise ValueError(f"{path}:{lineno}: parents must be a list of hashes, got {parents!r}")
        records.append(
            Record(
                root / rel,
                label,
                row.get("source", "unknown"),
                groups=tuple(sorted((str(k), str(v)) for k, v in groups.items())),
                parents=tuple(parents),
                fake_family=str(row.get("family") or "") if label == "fake" else "",
            )
        )
    return Dataset(records, root)


def load_folder(root: str | Path) -> Dataset:
    """Load ``root/real/**`` and ``root/fake/**`` images; the source is the folder name."""
    root = Path(root)
    records = []
    for label in LABELS:
        folder = root / label
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                records.append(Record(p, label, root.name))
    if not records:
        raise ValueError(f"{root}: no images under real/ or fake/")
    return Dataset(records, root)


def load_dataset(location: str | Path) -> Dataset:
    """A manifest file, a folder holding ``manifest.jsonl``, or a folder with real/ and fake/.

    Content hashes are computed and exact duplicates are recorded (see :func:`with_hashes`).
    """
    location = Path(location)
    if location.is_file():
        ds = load_manifest(location)
    elif (location / "manifest.jsonl").is_file():
        ds = load_manifest(location / "manifest.jsonl")
    elif location.is_dir():
        ds = load_folder(location)
    else:
        raise FileNotFoundError(
            f"{location}: no dataset here (want manifest.jsonl or real/, fake/)"
        )
    return with_hashes(ds)


def with_extra_sources(ds: Dataset) -> Dataset:
    """``ds`` plus the records of the manifest-extra.jsonl beside its manifest (hashed, and
    a byte-identical copy of an image already in ``ds`` left out), unless ``ds`` already
    holds them or there is no such file."""
    extra_path = ds.root / EXTRA_MANIFEST if ds.root is not None else None
    if extra_path is None or not extra_path.is_file():
        return ds
    extra = with_hashes(load_manifest(extra_path))
    if {r.source for r in extra} <= {r.source for r in ds}:
        return ds
    known = {r.sha256 for r in ds}
    merged = Dataset(ds.records + [r for r in extra if r.sha256 not in known], ds.root)
    return with_hashes(merged)


def with_synthetic(ds: Dataset, folder: str | Path) -> Dataset:
    """``ds`` plus the synthetic fakes written by ``facecheck synthesize`` in ``folder``.

    Every fake's parents must be images of ``ds`` (the set was made from this data): an
    evaluation places each fake in its parents' split, which it could not do otherwise.
    Byte-identical copies of images already in ``ds`` are left out.
    """
    folder = Path(folder)
    manifest = folder / "manifest.jsonl" if folder.is_dir() else folder
    synthetic = with_hashes(load_manifest(manifest))
    known = {r.sha256 for r in ds}
    orphans = [r for r in synthetic if not r.parents or not set(r.parents) <= known]
    if orphans:
        raise ValueError(
            f"{manifest}: {len(orphans)} synthetic fakes were not made from this data's images "
            f"(e.g. {orphans[0].path.name}); make them again with `facecheck synthesize`"
        )
    merged = Dataset(ds.records + [r for r in synthetic if r.sha256 not in known], ds.root)
    return with_hashes(merged)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def with_hashes(ds: Dataset) -> Dataset:
    """Fill every record's content hash and list byte-identical duplicates.

    A hash that appears under both labels is a contradiction in the data: those records are
    dropped (and kept in ``duplicates``) rather than let one picture be both real and fake.
    """
    records = [r if r.sha256 else replace(r, sha256=file_sha256(r.path)) for r in ds.records]
    by_hash: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_hash[r.sha256].append(r)
    duplicates = {h: [r.path for r in rs] for h, rs in by_hash.items() if len(rs) > 1}
    conflicting = {h for h, rs in by_hash.items() if len({r.label for r in rs}) > 1}
    kept = [r for r in records if r.sha256 not in conflicting]
    return Dataset(kept, ds.root, duplicates)


@dataclass(frozen=True)
class Split:
    train: Dataset
    val: Dataset
    test: Dataset

    def __getitem__(self, name: str) -> Dataset:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def sizes(self) -> dict[str, dict[str, int]]:
        return {name: self[name].counts() for name in SPLITS}


def split_by_hash(
    ds: Dataset,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    stratify_source: bool = True,
    one_class: bool = False,
) -> Split:
    """Stratified, seeded train/val/test split over unique content hashes.

    Every copy of an image follows its hash, so no image is in two splits. Strata are
    label x source, so each split keeps both the class balance and the source mix.
    ``one_class`` allows a set with one label only (a source of fakes added to another
    split).
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    first: dict[str, Record] = {}
    for r in ds.records:
        if not r.sha256:
            raise ValueError("records need content hashes: call with_hashes() first")
        first.setdefault(r.sha256, r)
    hashes = sorted(first)  # sorted, so the split depends on the seed only, not on file order
    labels = [first[h].label for h in hashes]
    for label in LABELS if not one_class else set(labels):
        if labels.count(label) < 3:
            raise ValueError(
                f"a train/val/test split needs at least 3 {label} images, got {labels.count(label)}"
            )
    strata = [
        f"{first[h].label}/{first[h].source}" if stratify_source else first[h].label for h in hashes
    ]
    # A label x source stratum too small to reach every split joins its label's stratum.
    sizes = {s: strata.count(s) for s in set(strata)}
    strata = [s if sizes[s] >= 10 else s.split("/")[0] for s in strata]
    _, f_val, f_test = fractions
    train_h, rest_h, _, rest_s = train_test_split(
        hashes, strata, test_size=f_val + f_test, random_state=seed, stratify=strata
    )
    val_h, test_h = train_test_split(
        rest_h, test_size=f_test / (f_val + f_test), random_state=seed, stratify=rest_s
    )
    assign = {h: "train" for h in train_h} | {h: "val" for h in val_h} | {h: "test" for h in test_h}
    parts: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for r in ds.records:
        parts[assign[r.sha256]].append(r)
    return Split(*(ds.subset(parts[s]) for s in SPLITS))


def grouped_folds(
    records: Sequence[Record], y: Sequence[int] | np.ndarray, k: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k seeded, stratified (train, test) index folds over ``records`` in which every copy
    of an image (same content hash) falls in one fold: the cross-validation twin of
    :func:`split_by_hash`, for comparing models on a pool whose test split is kept aside."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, [r.sha256 for r in records]))


def draw(records: Sequence[Record], n: int, *, seed: int) -> list[Record]:
    """A seeded draw of ``n`` records without replacement.

    Records are ordered by content hash first, so the draw depends on the seed and the
    images, not on the order of the manifest.
    """
    if n > len(records):
        raise ValueError(f"cannot draw {n} from {len(records)} records")
    ordered = sorted(records, key=lambda r: (r.sha256, str(r.path)))
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(ordered), size=n, replace=False).tolist())
    return [ordered[i] for i in picked]


def region_targets(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """Region labels (n, 4) and a mask of the records that have them.

    An rff fake's bits come from its name; every region of a real is untouched (0). Fakes
    without four bits (the one 3-bit rff name, generated faces) have no region labels, and
    nor do reals of a source without labelled fakes: UTKFace's reals against rff's fakes
    would teach the regions to tell the sources apart (a linear probe does that perfectly).
    """
    Y = np.zeros((len(records), len(REGIONS)), np.int64)
    known = np.zeros(len(records), bool)
    sources = {r.source for r in records if r.label == "fake" and r.regions is not None}
    for i, r in enumerate(records):
        if r.label == "real" and r.source in sources:
            known[i] = True
        elif r.regions is not None:
            Y[i], known[i] = r.regions, True
    return Y, known


def region_bits(records: Sequence[Record]) -> np.ndarray:
    """:func:`region_targets` as one float array (n, 4), NaN where a record has none."""
    Y, known = region_targets(records)
    return np.where(known[:, None], Y.astype(np.float64), np.nan)
