"""A reproducible set of synthetic fakes made from real photos: morphs, swaps, self-blends.

The generators (:mod:`facecheck.training.synthetic`) make one fake from one or two faces;
this module draws the faces, pairs them and writes the fakes as a dataset folder (JPEG
files, their masks as PNG, a ``manifest.jsonl``) that :func:`facecheck.evaluation.data.
with_synthetic` loads. Every fake names its parents by content hash, so an evaluation puts
it in the split its parents are in: a fake made from a test photo is never trained on, and
no pair mixes splits (the caller hands in the parents with their split).

Pairs stay within one source (camera) and one split; where both parents carry a gender
label, a morph's or swap's second face is drawn from the same gender when there is one
(morph attacks pick look-alikes). Faces are drawn uniformly, so every group appears in the
synthetic fakes in its share of the reals (``groups`` of the first parent is kept, so the
equal-treatment table can show recall by group).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin
from tqdm import tqdm

from facecheck.image.decode import ImageError, load_image
from facecheck.image.landmarks import face_landmarks
from facecheck.image.perturb import seeded_rng
from facecheck.training.synthetic import SyntheticFake, morph, self_blend, swap

# Kind -> (the fake family it stands for in protocol P8, faces it takes).
KINDS: dict[str, tuple[str, int]] = {
    "morph": ("morph", 2),
    "swap": ("faceswap", 2),
    "sbi": ("self_blend", 1),
}
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Parent:
    """A real photo a fake may be made from."""

    path: Path
    sha256: str
    source: str
    split: str
    groups: tuple[tuple[str, str], ...] = ()

    @property
    def gender(self) -> str | None:
        value = dict(self.groups).get("gender")
        return None if value in (None, "unknown") else value


def source_name(kind: str, camera: str) -> str:
    """The source a synthetic fake is filed under: its kind and its parents' camera."""
    return f"{kind}_{camera}"


class _Faces:
    """Decoded pixels and landmarks of parents, computed once (None: no single face)."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def __call__(self, p: Parent) -> tuple[np.ndarray, np.ndarray] | None:
        if p.sha256 not in self._memo:
            try:
                px = np.asarray(load_image(p.path).image.convert("RGB"))
            except ImageError:
                self._memo[p.sha256] = None
                return None
            points = face_landmarks(px)
            self._memo[p.sha256] = None if points is None else (px, points)
        return self._memo[p.sha256]


def _resized(px: np.ndarray, points: np.ndarray, size: tuple[int, int]):
    """``px`` and its landmarks at ``size`` (w, h): a pair's second face on the first's grid."""
    h, w = px.shape[:2]
    if (w, h) == size:
        return px, points
    img = Image.fromarray(px).resize(size, Image.Resampling.BICUBIC)
    return np.asarray(img), points * np.array([size[0] / w, size[1] / h])


def _make(kind: str, a, b, rng: np.random.Generator) -> SyntheticFake:
    (pa, la) = a
    if kind == "sbi":
        return self_blend(pa, la, rng)
    pb, lb = _resized(*b, (pa.shape[1], pa.shape[0]))
    return (morph if kind == "morph" else swap)(pa, la, pb, lb, rng)


def _encoded_like(image: np.ndarray, parent: Path) -> tuple[bytes, str]:
    """``image`` encoded as its parent was: a JPEG parent's own quantisation tables and
    chroma subsampling (so the fake carries the same compression history as the reals of
    its camera and only the blend tells it apart), any other parent as lossless PNG.
    Returns the bytes and the file suffix."""
    buf = io.BytesIO()
    with Image.open(parent) as im:
        if im.format == "JPEG":
            tables = {k: list(v) for k, v in im.quantization.items()}
            sampling = JpegImagePlugin.get_sampling(im)
            Image.fromarray(image).save(buf, "JPEG", qtables=tables, subsampling=max(sampling, 0))
            return buf.getvalue(), ".jpg"
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue(), ".png"


def synthesize(
    parents: Sequence[Parent],
    out: str | Path,
    *,
    n_train: int,
    kinds: Sequence[str] = tuple(KINDS),
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Write ``n_train`` fakes of each kind per camera from its training parents (and as
    many per validation or test parent, in proportion) under ``out``; return the manifest
    rows (also written to ``out/manifest.jsonl``).

    Each fake is encoded as its first parent was (the same JPEG tables), so neither its
    format nor its compression tells it from its camera's reals: a set saved at its own
    qualities taught a detector that a re-saved real photo is fake.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown synthetic kinds {sorted(unknown)}; choose from {list(KINDS)}")
    out = Path(out)
    by_cell: dict[tuple[str, str], list[Parent]] = {}
    for p in sorted(parents, key=lambda p: (p.sha256, str(p.path))):
        by_cell.setdefault((p.source, p.split), []).append(p)
    faces = _Faces()
    rows: list[dict] = []
    for (camera, split), pool in sorted(by_cell.items()):
        n_cam_train = len(by_cell.get((camera, "train"), pool))
        n = max(1, round(n_train * len(pool) / n_cam_train))
        for kind in kinds:
            rows += _cell(pool, kind, camera, split, n, out, faces, seed, progress)
            if log:
                log(f"{kind} {camera} {split}: {n}")
    out.mkdir(parents=True, exist_ok=True)
    with (out / MANIFEST).open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return rows


def _cell(pool, kind, camera, split, n, out: Path, faces: _Faces, seed, progress) -> list[dict]:
    rng = seeded_rng(seed, kind, camera, split)
    takes = KINDS[kind][1]
    rows: list[dict] = []
    tries = 0
    folder = out / source_name(kind, camera) / split
    folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=n, desc=f"{kind} {camera} {split}", disable=not progress, leave=False)
    while len(rows) < n:
        tries += 1
        if tries > 5 * n + 50:
            raise RuntimeError(f"{kind} {camera} {split}: too few usable faces for {n} fakes")
        a = pool[int(rng.integers(len(pool)))]
        chosen = [a]
        if takes == 2:
            alike = [p for p in pool if p is not a and a.gender and p.gender == a.gender]
            others = alike or [p for p in pool if p is not a]
            if not others:
                raise ValueError(f"{kind} {camera} {split}: a pair needs two faces")
            chosen.append(others[int(rng.integers(len(others)))])
        got = [faces(p) for p in chosen]
        if any(g is None for g in got):
            continue
        fake = _make(kind, got[0], got[1] if takes == 2 else None, rng)
        name = f"{kind}_{camera}_{split}_{len(rows):05d}"
        data, suffix = _encoded_like(fake.image, a.path)
        (folder / f"{name}{suffix}").write_bytes(data)
        mask = Image.fromarray(np.rint(fake.mask * 255).astype(np.uint8))
        mask.save(folder / f"{name}.mask.png")
        rows.append(
            {
                "path": f"{source_name(kind, camera)}/{split}/{name}{suffix}",
                "label": "fake",
                "source": source_name(kind, camera),
                "family": KINDS[kind][0],
                "parents": [p.sha256 for p in chosen],
                "mask": f"{source_name(kind, camera)}/{split}/{name}.mask.png",
                "strength": round(fake.alpha, 3),
                "groups": dict(a.groups),
            }
        )
        bar.update(1)
    bar.close()
    return rows
