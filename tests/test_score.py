"""`facecheck score`: any number of images into one Parquet file; a killed run resumes with
no row lost or written twice, and gives the rows an uninterrupted run gives."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from facecheck.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory):
    """14 images (rff, UTKFace, GAN) and one corrupt file, as a .txt list."""
    pick = [*sorted((shared_data / "rff" / "real").glob("*.jpg"))[:5],
            *sorted((shared_data / "utkface" / "real").glob("*.jpg"))[:5],
            *sorted((shared_data / "gan" / "fake").glob("*.jpg"))[:4]]  # fmt: skip
    folder = tmp_path_factory.mktemp("score-inputs")
    broken = folder / "broken.jpg"
    broken.write_bytes(pick[0].read_bytes()[:400])
    listing = folder / "files.txt"
    listing.write_text("\n".join(map(str, [*pick, broken])) + "\n")
    return listing, [*pick, broken]


def test_score_writes_one_row_per_image_with_errors_as_rows(inputs, tmp_path, capsys):
    listing, files = inputs
    out = tmp_path / "all.parquet"
    assert main(["score", str(listing), "--out", str(out), "--chunk", "4", "--quiet"]) == 0
    table = pq.read_table(out).to_pylist()
    assert [r["path"] for r in table] == [str(f) for f in files]
    assert [r["index"] for r in table] == list(range(len(files)))
    assert table[-1]["verdict"] == "invalid_image" and table[-1]["error_code"]
    assert all(r["model_version"] for r in table)
    assert {r["verdict"] for r in table[10:14]} == {"fake"}  # the GAN faces
    assert not (tmp_path / "all.parquet.parts").exists()
    assert "15 rows" in capsys.readouterr().out


def test_a_killed_run_resumes_without_gaps_or_duplicates(inputs, tmp_path):
    listing, files = inputs
    whole = tmp_path / "whole.parquet"
    assert main(["score", str(listing), "--out", str(whole), "--chunk", "2", "--quiet"]) == 0
    out = tmp_path / "resumed.parquet"
    parts = tmp_path / "resumed.parquet.parts"
    cmd = [sys.executable, "-m", "facecheck.cli", "score", str(listing), "--out", str(out),
           "--chunk", "2", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(list(parts.glob("part-*.parquet"))) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: some parts written, one maybe half-scored
    proc.wait(30)
    kept = len(list(parts.glob("part-*.parquet")))
    assert 2 <= kept < 8 and not out.exists()
    assert main(["score", str(listing), "--out", str(out), "--chunk", "2", "--quiet"]) == 0
    got, want = pq.read_table(out).to_pylist(), pq.read_table(whole).to_pylist()
    assert [r["index"] for r in got] == list(range(len(files)))  # no gap, no duplicate
    for a, b in zip(got, want, strict=True):
        assert (a["path"], a["verdict"]) == (b["path"], b["verdict"])
        assert a["fake_probability"] == pytest.approx(b["fake_probability"], abs=1e-6)
    # Resuming with another file list is refused, not mixed.
    parts.mkdir()
    (parts / "_job.json").write_text('{"files": 1}')
    assert main(["score", str(listing), "--out", str(out), "--chunk", "2", "--quiet"]) == 2


def test_ray_workers_give_the_local_rows(inputs, tmp_path):
    """Two Ray actors on a local Ray instance the test starts: the same rows, in the same
    order, as one process (parts are the unit of work either way)."""
    ray = pytest.importorskip("ray")
    listing, files = inputs
    local, distributed = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert main(["score", str(listing), "--out", str(local), "--chunk", "4", "--quiet"]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["score", str(listing), "--out", str(distributed), "--chunk", "4",
                     "--engine", "ray", "--workers", "2", "--quiet"]) == 0  # fmt: skip
    finally:
        ray.shutdown()
    got, want = pq.read_table(distributed).to_pylist(), pq.read_table(local).to_pylist()
    assert len(got) == len(files)
    for a, b in zip(got, want, strict=True):
        assert (a["index"], a["path"], a["verdict"], a["error_code"]) == (
            b["index"],
            b["path"],
            b["verdict"],
            b["error_code"],
        )
        assert a["fake_probability"] == pytest.approx(b["fake_probability"], abs=1e-6)
