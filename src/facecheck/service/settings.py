"""Settings of the service, from arguments or ``FACECHECK_*`` environment variables.

With none set, ``facecheck serve`` runs on the shipped detector with an SQLite file under
``$XDG_DATA_HOME/facecheck`` (``~/.local/share/facecheck``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facecheck"


@dataclass(frozen=True)
class ServiceSettings:
    """What ``facecheck serve`` and the admin commands run with."""

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    # SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default: SQLite in data_dir.
    database_url: str | None = None
    # Detector bundle folder; default: the one shipped in the package.
    model: Path | None = None
    # p >= fake_above is decided "fake" without a person; None: every image the detector
    # flags (p >= its validation threshold) goes to review, nothing is rejected unseen.
    fake_above: float | None = None
    # Open a review case for "fake" verdicts too (every "review" verdict always gets one).
    cases_for_fakes: bool = True
    # Images (personal data) are deleted this long after the check; open cases keep theirs
    # until they are decided.
    retention_days: float = 30.0
    max_upload_bytes: int = 10 * 1024 * 1024
    # How long a reviewer holds a case they opened before another may take it.
    lease_seconds: int = 600
    session_hours: float = 8.0
    # Requests waiting when the model thread is free are scored together, up to this many.
    # 1 (one at a time) by default: on the 2-core CPU batching bought no throughput
    # (benchmarks/load.md); on a GPU it may pay.
    max_batch: int = 1
    # Mark cookies Secure (set this when the service is behind HTTPS).
    secure_cookies: bool = False

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'facecheck.db'}"

    @classmethod
    def from_env(cls, **overrides: object) -> ServiceSettings:
        """Defaults, then ``FACECHECK_<FIELD>`` variables, then non-None ``overrides``."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = os.environ.get(f"FACECHECK_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("data_dir", "model"):
            if values.get(name) is not None:
                values[name] = Path(str(values[name])).expanduser()
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.fake_above is not None and not 0 < self.fake_above <= 1:
            raise ValueError(f"fake_above must be in (0, 1], got {self.fake_above}")
        if self.retention_days < 0:
            raise ValueError("retention_days must be >= 0")
        if self.max_upload_bytes < 1024:
            raise ValueError("max_upload_bytes must be at least 1024")
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.lease_seconds < 10:
            raise ValueError("lease_seconds must be at least 10")


def _parse(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in dataclasses.fields(ServiceSettings)}[name]
    if "bool" in str(kind):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if "int" in str(kind):
        return int(raw)
    if "float" in str(kind):
        return float(raw)
    return raw
