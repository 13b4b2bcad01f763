"""Scoring any number of images into one Parquet file, resumably (``facecheck score``).

The file list is split into fixed chunks; each chunk's rows are written as one Parquet part
(to a temporary name, then renamed: a part is there whole or not at all) in
``<out>.parts/``. A run that is killed loses at most the chunk it was scoring; run again,
it skips the parts that exist, so no row is lost or written twice. When every part is
there they are merged into ``<out>`` (again through a temporary file) and the parts go.
A job file pins the file list and the model: resuming with another list or another
detector is refused rather than mixed. Memory stays at one chunk whatever the number of
images. Every row carries the model version; a file that cannot be judged is a row with
its error, not a failure of the run.

With ``engine="ray"`` the missing parts are scored by a pool of Ray actors, each holding
its own detector (one per worker; ``address`` joins an existing cluster, whose nodes must
see the input files and the output folder at the same paths). Parts are the unit of work
and of resumption either way, so a Ray run that is killed resumes like a local one, and
its rows equal the local run's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from facecheck.detector.verdict import Verdict
from facecheck.image.regions import REGIONS

JOB = "_job.json"


class Scorer(Protocol):
    """What scores a chunk: a :class:`~facecheck.detector.pipeline.Detector` or an
    :class:`~facecheck.detector.runtime.ExportedDetector`."""

    version: str

    def check(self, X, names=None, *, regions: str = "flagged") -> list[Verdict]: ...


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("index", pa.int64()),
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("verdict", pa.string()),
            ("fake_probability", pa.float64()),
            ("threshold", pa.float64()),
            ("error_code", pa.string()),
            ("error", pa.string()),
            ("face", pa.string()),
            *[(f"region_{r}", pa.float64()) for r in REGIONS],
            ("model_version", pa.string()),
            ("scored_at", pa.string()),
        ]
    )


def row(index: int, path: str, v: Verdict, at: str) -> dict[str, object]:
    regions = v.regions or {}
    return {
        "index": index,
        "path": path,
        "sha256": v.sha256,
        "verdict": v.verdict,
        "fake_probability": v.fake_probability,
        "threshold": v.threshold,
        "error_code": v.error_code,
        "error": v.error,
        "face": None if v.face is None else str(v.face.get("action")),
        **{f"region_{r}": regions.get(r) for r in REGIONS},
        "model_version": v.model_version,
        "scored_at": at,
    }


@dataclass(frozen=True)
class Summary:
    rows: int
    scored_now: int
    parts_reused: int
    flagged: int
    invalid: int
    out: Path


def _job(files: Sequence[Path], det: Scorer, chunk: int) -> dict[str, object]:
    listing = hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()
    return {"files": len(files), "list_sha256": listing, "model": det.version, "chunk": chunk}


def write_part(det: Scorer, start: int, batch: list[str], part: str, regions: str) -> int:
    """Score one chunk and write its part (whole or not at all); returns its size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    verdicts = det.check([Path(b) for b in batch], regions=regions)
    rows = [row(start + i, f, v, at) for i, (f, v) in enumerate(zip(batch, verdicts, strict=True))]
    tmp = Path(part).with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp)
    os.replace(tmp, part)
    return len(batch)


def _score_parts_on_ray(model, todo, regions: str, workers: int, address: str | None, load):
    """The parts in ``todo`` scored by ``workers`` Ray actors, each with its own detector
    (``load(model)``) and an equal share of the node's CPU threads; yields each part's size
    as it lands."""
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // max(workers, 1))

    @ray.remote(num_cpus=threads)
    class Scorer:
        def __init__(self, model_dir):
            os.environ["FACECHECK_THREADS"] = str(threads)  # ONNX Runtime's
            self.det = load(model_dir)
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(threads)

        def part(self, start, batch, part, regions):
            return write_part(self.det, start, batch, part, regions)

    pool = ActorPool([Scorer.remote(model) for _ in range(workers)])
    yield from pool.map_unordered(lambda a, job: a.part.remote(*job, regions), todo)


def score(
    det: Scorer,
    files: Sequence[Path],
    out: str | Path,
    *,
    chunk: int = 64,
    regions: str = "flagged",
    progress: Callable[[int], None] | None = None,
    engine: str = "local",
    model: str | Path | None = None,
    workers: int = 1,
    address: str | None = None,
    load: Callable[[str | Path | None], Scorer] | None = None,
) -> Summary:
    """Score ``files`` into the Parquet file ``out`` (see the module docstring).

    ``engine="ray"``: ``workers`` actors each ``load`` the bundle at ``model`` (None: the
    shipped one; ``det`` only names the job) on a local Ray instance or the cluster at
    ``address``.
    """
    import pyarrow.parquet as pq

    if engine not in ("local", "ray"):
        raise ValueError(f"engine is local or ray, not {engine!r}")

    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    job = _job(files, det, chunk)
    if parts.exists():
        was = json.loads((parts / JOB).read_text()) if (parts / JOB).exists() else None
        if was != job:
            raise ValueError(
                f"{parts} holds an unfinished run of another file list, model or chunk size "
                f"({was}); delete it to start again"
            )
    else:
        parts.mkdir(parents=True)
        (parts / JOB).write_text(json.dumps(job))
    schema = _schema()
    scored_now = reused = 0
    todo = []
    for k, start in enumerate(range(0, len(files), chunk)):
        part = parts / f"part-{k:06d}.parquet"
        batch = [str(f) for f in files[start : start + chunk]]
        if part.exists():
            reused += 1
            if progress:
                progress(len(batch))
        else:
            todo.append((start, batch, str(part)))
    if engine == "ray":
        if load is None:
            raise ValueError("engine ray needs load, the function each actor loads the model with")
        done = _score_parts_on_ray(model, todo, regions, workers, address, load)
    else:
        done = (write_part(det, start, batch, part, regions) for start, batch, part in todo)
    for n_scored in done:
        scored_now += n_scored
        if progress:
            progress(n_scored)
    n = flagged = invalid = 0
    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for part in sorted(parts.glob("part-*.parquet")):
            table = pq.read_table(part, schema=schema)
            writer.write_table(table)
            n += table.num_rows
            verdicts = table.column("verdict").to_pylist()
            flagged += sum(v == "fake" for v in verdicts)
            invalid += sum(v not in ("real", "fake") for v in verdicts)
    if n != len(files):
        raise RuntimeError(f"{parts}: {n} rows for {len(files)} files; parts are damaged")
    os.replace(tmp, out)
    shutil.rmtree(parts)
    return Summary(n, scored_now, reused, flagged, invalid, out)
