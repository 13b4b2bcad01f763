"""The on-disk feature cache: rows keyed by (content hash, backbone + weights + runtime,
preprocessing, view), so a second run over the same images extracts nothing."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def default_cache_dir() -> Path:
    env = os.environ.get("FACECHECK_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facecheck"


class FeatureCache:
    """Feature vectors in one SQLite file, keyed by (extractor key, content hash).

    SQLite gives atomic writes and safe concurrent readers with nothing to install; a
    killed run keeps every batch it committed, so extraction resumes where it stopped.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "features.sqlite"
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS features (key TEXT NOT NULL, sha256 TEXT NOT NULL,"
                " dim INTEGER NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (key, sha256))"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def get_many(self, key: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        conn = self._conn()
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT sha256, dim, vec FROM features WHERE key=? AND sha256 IN ({marks})",
                [key, *chunk],
            )
            for digest, dim, blob in rows:
                # The blob's length says how the vector was stored (see put_many).
                dtype = np.float16 if len(blob) == 2 * dim else np.float32
                out[digest] = np.frombuffer(blob, dtype=dtype)
        return out

    def put_many(
        self, key: str, items: dict[str, np.ndarray], dtype: np.dtype | type = np.float32
    ) -> None:
        """Store vectors as float32, or float16 (``dtype``) for wide ones such as
        :class:`facecheck.features.views.TokenView`'s: half the disk."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"the cache stores float32 or float16, not {dtype}")
        with self._conn() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)",
                [
                    (key, h, v.size, np.ascontiguousarray(v, dtype).tobytes())
                    for h, v in items.items()
                ],
            )

    def count(self, key: str | None = None) -> int:
        q = "SELECT COUNT(*) FROM features" + (" WHERE key=?" if key else "")
        return int(self._conn().execute(q, (key,) if key else ()).fetchone()[0])
