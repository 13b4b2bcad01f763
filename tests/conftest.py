"""Shared fixtures: small real subsets of ../shared/data and real backbones (no mocks)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "manifest.jsonl").is_file():
        pytest.fail(f"the shared data set is missing at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def full_dataset(shared_data):
    from facecheck.data import load_dataset

    return load_dataset(shared_data)


def write_subset(shared_data: Path, out: Path, per_stratum: int, seed: int = 0) -> Path:
    """A manifest of ``per_stratum`` images per (source, label), absolute paths."""
    rows = [json.loads(line) for line in (shared_data / "manifest.jsonl").read_text().splitlines()]
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["source"], r["label"]), []).append(r)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    with manifest.open("w") as fh:
        for key in sorted(by):
            for r in rng.sample(by[key], per_stratum):
                fh.write(json.dumps({**r, "path": str(shared_data / r["path"])}) + "\n")
    return manifest


@pytest.fixture(scope="session")
def small_manifest(shared_data, tmp_path_factory) -> Path:
    """100 real images: 20 from each of rff real, rff fake, utkface, tpdne, fakefaces."""
    return write_subset(shared_data, tmp_path_factory.mktemp("small"), 20)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def lite0():
    from facecheck.features import load_backbone

    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def face_paths(shared_data) -> list[Path]:
    """A handful of real and fake face images."""
    return [
        *sorted((shared_data / "rff" / "real").glob("*.jpg"))[:4],
        *sorted((shared_data / "rff" / "fake").glob("*.jpg"))[:4],
        *sorted((shared_data / "gan" / "fake").glob("*.jpg"))[:4],
    ]
