"""Shared fixtures: small real subsets of ../shared/data and real backbones (no mocks)."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()

# The suite runs the same numeric path on every CPU: left on "auto", a CPU with native
# bf16 would run CLIP in bf16 and an AVX2-only one in fp32. test_precision.py tries "auto"
# as each kind of CPU would choose, and bf16 against fp32, explicitly.
os.environ["FACECHECK_PRECISION"] = "fp32"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "manifest.jsonl").is_file():
        pytest.fail(f"the shared data set is missing at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def full_dataset(shared_data):
    from facecheck.evaluation.data import load_dataset

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
    from facecheck.backbones.registry import load_backbone

    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def face_paths(shared_data) -> list[Path]:
    """A handful of real and fake face images."""
    return [
        *sorted((shared_data / "rff" / "real").glob("*.jpg"))[:4],
        *sorted((shared_data / "rff" / "fake").glob("*.jpg"))[:4],
        *sorted((shared_data / "gan" / "fake").glob("*.jpg"))[:4],
    ]


# -- databases for the service's storage tests: SQLite always, PostgreSQL where .ci/run (or
# a developer) started one and named it in FACECHECK_TEST_POSTGRES_URL.
POSTGRES_URL = os.environ.get("FACECHECK_TEST_POSTGRES_URL")


def _fresh_postgres_db() -> tuple[str, object]:
    import uuid

    from sqlalchemy import create_engine, text

    name = f"fc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """A fresh, empty database: an SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'facecheck.db'}"
        return
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must run the storage tests on PostgreSQL: .ci/run starts one")
        pytest.skip("no PostgreSQL server (set FACECHECK_TEST_POSTGRES_URL, see .ci/services.sh)")
    url, drop = _fresh_postgres_db()
    yield url
    drop()


@pytest.fixture
def store(database_url):
    from facecheck.service.store import Store

    st = Store(database_url)
    yield st
    st.dispose()


@pytest.fixture(scope="session")
def shipped_detector():
    """The detector bundle shipped inside the package, loaded once."""
    from facecheck.detector.pipeline import Detector

    return Detector.load(None)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(shared_data) -> dict[str, bytes]:
    """One upload per verdict the shipped detector gives (checked in the tests)."""
    face = Image.open(shared_data / "rff" / "real" / "real_00002.jpg").convert("RGB")
    other = Image.open(shared_data / "rff" / "real" / "real_00003.jpg").convert("RGB")
    two = Image.new("RGB", (700, 400), (200, 200, 200))
    two.paste(face.resize((220, 220)), (40, 90))
    two.paste(other.resize((220, 220)), (420, 80))
    utk = sorted((shared_data / "utkface" / "real").glob("*.jpg"))[0]
    # A real rff photo that the shipped detector flags below 0.995: a case for a person.
    jpeg = (shared_data / "rff" / "real" / "real_00142.jpg").read_bytes()
    return {
        "real": utk.read_bytes(),
        "review": jpeg,
        "fake": (shared_data / "gan" / "fake" / "fakefaces_faces_10.jpg").read_bytes(),
        "no_face": _png_bytes(Image.new("RGB", (320, 240), (30, 60, 90))),
        "multiple_faces": _png_bytes(two),
        "invalid_image": jpeg[: len(jpeg) // 3],  # a truncated JPEG: sniffs fine, cannot decode
    }
