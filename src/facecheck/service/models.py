"""The service's tables (SQLAlchemy ORM), created and upgraded by Alembic
(:mod:`facecheck.service.migrations`); :class:`facecheck.service.store.Store` reads and
writes them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    """Naive UTC: what both SQLite and PostgreSQL columns hold here."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(12))  # shown in listings; not a secret
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # Updated at most once a minute (a write per request would cost the API).
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Reviewer(Base):
    __tablename__ = "reviewers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    # admin (decides escalated cases, sees everything), reviewer, auditor (reads only).
    role: Mapped[str] = mapped_column(String(20), server_default="reviewer")
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ReviewSession(Base):
    __tablename__ = "review_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Check(Base):
    __tablename__ = "checks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    verdict: Mapped[str] = mapped_column(String(20), index=True)
    fake_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    regions: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    face: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_version: Mapped[str] = mapped_column(String(64))
    timing_ms: Mapped[float] = mapped_column(Float)
    # Each voting member's score, threshold and vote, when a panel decided.
    votes: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # Per-key quotas count a key's recent checks.
    __table_args__ = (Index("ix_checks_api_key_created", "api_key_id", "created_at"),)


class StoredImage(Base):
    __tablename__ = "images"
    check_id: Mapped[str] = mapped_column(ForeignKey("checks.id"), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    media_type: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    check_id: Mapped[str] = mapped_column(ForeignKey("checks.id"), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    status: Mapped[str] = mapped_column(String(10), index=True)  # open | decided
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    decision: Mapped[str | None] = mapped_column(String(10), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"), nullable=True)
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Four eyes: the first reviewer's "fake" waits for a second reviewer (status "second");
    # a disagreement goes to an admin (status "escalated").
    first_decision: Mapped[str | None] = mapped_column(String(10), nullable=True)
    first_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    first_comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    first_decided_by: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"), nullable=True)
    first_decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class AuditEvent(Base):
    """One security-relevant or reviewer action; each row's hash covers its content and
    the previous row's hash (:mod:`facecheck.service.audit`)."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str | None] = mapped_column(String(120), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (
        Index("ix_audit_action_actor_at", "action", "actor", "at"),
        Index("ix_audit_action_address_at", "action", "address", "at"),
        Index("ix_audit_target", "target"),
    )


class AuditHead(Base):
    """The chain's newest event (one row, locked by every append so appends serialise)
    and how far retention has deleted it."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    purged_through: Mapped[int] = mapped_column(Integer)


class WebhookDelivery(Base):
    """One event to deliver to the onboarding system (at least once, signed), and how the
    tries went (:mod:`facecheck.service.webhooks`)."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[str] = mapped_column(String(40))
    # The receiver de-duplicates on it: a retried delivery carries the same key.
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
