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
    # Further detector bundles (comma-separated folders) that vote with `model`: unanimous
    # verdicts are automatic, any disagreement goes to a person (the thesis's rule).
    members: str | None = None
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
    # Requests waiting when the model thread is free are scored together, up to this many
    # (no batching window: a lone request never waits). With the round-2 bundle in bf16 on
    # the 2-core CPU it paid at 4 and 16 clients and cost nothing at 1 (benchmarks/load.md).
    max_batch: int = 16
    # Cookies are Secure and __Host- prefixed (HTTPS only). False only for development on
    # plain HTTP (`facecheck serve --insecure-dev`).
    secure_cookies: bool = True
    # Send Strict-Transport-Security (set behind TLS; browsers then refuse plain HTTP).
    hsts: bool = False
    # Body limit of every route that takes a form but not an image (logins, decisions).
    max_form_bytes: int = 64 * 1024
    # Uploads waiting for the model beyond this many are refused: 503 with Retry-After.
    max_pending: int = 32
    # Check rows (verdicts, no images) are deleted this long after the check; 0: kept.
    check_retention_days: float = 400.0
    # Audit events are kept this long (the chain stays verifiable from the oldest kept).
    audit_retention_days: float = 7 * 365.0
    # Logins: this many failures in `login_window_s` lock the account (or, 4x as many, the
    # client address), for 30 s doubling with every further failure up to 15 minutes.
    login_max_failures: int = 5
    login_window_s: int = 900
    # Per API key: checks accepted per minute (429 with Retry-After past it); 0: no quota.
    key_quota_per_minute: int = 600
    # /metrics, /docs and /openapi.json without an API key (for a bind no client can reach).
    public_metrics_and_docs: bool = False
    # A reviewer's "fake" is final only when a second reviewer agrees (disagreement: admin).
    four_eyes: bool = True
    # POST every final decision here, signed with the secret (FACECHECK_WEBHOOK_SECRET).
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_backoff_s: float = 5.0

    @property
    def member_paths(self) -> list[Path]:
        return [Path(p.strip()).expanduser() for p in (self.members or "").split(",") if p.strip()]

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
        if self.max_form_bytes < 1024 or self.max_pending < 1:
            raise ValueError("max_form_bytes must be >= 1024 and max_pending >= 1")
        if min(self.check_retention_days, self.audit_retention_days) < 0:
            raise ValueError("retention periods must be >= 0")
        if self.webhook_url and len(self.webhook_secret or "") < 16:
            raise ValueError("webhook_url needs webhook_secret (16 characters or more)")
        if self.login_max_failures < 1 or self.login_window_s < 1 or self.key_quota_per_minute < 0:
            raise ValueError("login_max_failures, login_window_s >= 1; key_quota_per_minute >= 0")


def _parse(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in dataclasses.fields(ServiceSettings)}[name]
    if "bool" in str(kind):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if "int" in str(kind):
        return int(raw)
    if "float" in str(kind):
        return float(raw)
    return raw
