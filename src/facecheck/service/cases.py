"""The review queue's cases: claims with a lease, four-eyes decisions, reason codes, history.

A case is ``open`` until a reviewer decides it. ``real`` is final at once; ``fake`` (a
customer turned away) needs a second pair of eyes when four-eyes is on: the case goes to
``second``, where any other reviewer may take it; agreement makes the ``fake`` final,
disagreement sends the case to ``escalated``, where an admin decides. Claiming and
deciding are single conditional UPDATEs on the state read in the same transaction
(compare and set), so two reviewers never both move a case, on SQLite or PostgreSQL, and
every move is an audit event in that transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update

from facecheck.service import audit, webhooks
from facecheck.service.audit import Who
from facecheck.service.models import Case, Check, Reviewer, StoredImage, utcnow

DECISIONS = ("real", "fake")
OPEN_STATES = ("open", "second", "escalated")
ROLES = ("admin", "reviewer", "auditor")
# Why a reviewer decided as they did: a closed list, so decisions can be counted and
# audited (free text goes in the comment).
REASONS: dict[str, tuple[str, ...]] = {
    "fake": (
        "blend_boundary",
        "texture_or_noise",
        "lighting_or_shadow",
        "geometry",
        "generated_look",
        "face_swap",
        "morph",
        "other",
    ),
    "real": ("no_sign_of_editing", "compression_only", "poor_quality_but_real", "other"),
}


@dataclass(frozen=True)
class CaseView:
    """One case with its check, as the review page and the export see it."""

    id: int
    check_id: str
    created_at: dt.datetime
    status: str
    verdict: str
    fake_probability: float | None
    threshold: float | None
    regions: dict | None
    model_version: str
    external_id: str | None
    claimed_by: str | None
    lease_until: dt.datetime | None
    decision: str | None
    comment: str | None
    decided_by: str | None
    decided_at: dt.datetime | None
    has_image: bool
    reason: str | None = None
    first_decision: str | None = None
    first_reason: str | None = None
    first_comment: str | None = None
    first_decided_by: str | None = None
    first_decided_at: dt.datetime | None = None
    face: dict | None = None
    votes: list | None = None


def _claimable(reviewer_id: int, role: str, now: dt.datetime):
    """A case this reviewer may take: in a state their role works on, not their own first
    decision, and nobody's, already theirs, or its lease ran out."""
    if role == "auditor":
        return Case.id.is_(None)  # never
    states = [
        Case.status == "open",
        and_(
            Case.status == "second",
            or_(Case.first_decided_by.is_(None), Case.first_decided_by != reviewer_id),
        ),
    ]
    if role == "admin":
        states.append(Case.status == "escalated")
    free = or_(Case.claimed_by.is_(None), Case.claimed_by == reviewer_id, Case.lease_until < now)
    return and_(or_(*states), free)


class CaseQueue:
    """The case methods of :class:`facecheck.service.store.Store` (needs ``_session``)."""

    _session: object

    def _case_query(self):
        claimer = Reviewer.__table__.alias("claimer")
        decider = Reviewer.__table__.alias("decider")
        first = Reviewer.__table__.alias("first")
        has_image = select(StoredImage.check_id).where(StoredImage.check_id == Check.id).exists()
        return (
            select(Case, Check, claimer.c.username, decider.c.username, first.c.username, has_image)
            .join(Check, Check.id == Case.check_id)
            .outerjoin(claimer, claimer.c.id == Case.claimed_by)
            .outerjoin(decider, decider.c.id == Case.decided_by)
            .outerjoin(first, first.c.id == Case.first_decided_by)
        )

    @staticmethod
    def _view(row) -> CaseView:
        case, check, claimer, decider, first, has_image = row
        return CaseView(
            id=case.id,
            check_id=check.id,
            created_at=case.created_at,
            status=case.status,
            verdict=check.verdict,
            fake_probability=check.fake_probability,
            threshold=check.threshold,
            regions=check.regions,
            model_version=check.model_version,
            external_id=check.external_id,
            claimed_by=claimer,
            lease_until=case.lease_until,
            decision=case.decision,
            comment=case.comment,
            decided_by=decider,
            decided_at=case.decided_at,
            has_image=bool(has_image),
            reason=case.reason,
            first_decision=case.first_decision,
            first_reason=case.first_reason,
            first_comment=case.first_comment,
            first_decided_by=first,
            first_decided_at=case.first_decided_at,
            face=check.face,
            votes=check.votes,
        )

    def case(self, case_id: int) -> CaseView | None:
        with self._session() as s:
            row = s.execute(self._case_query().where(Case.id == case_id)).first()
            return None if row is None else self._view(row)

    def open_cases(
        self,
        limit: int = 200,
        *,
        states: tuple[str, ...] = OPEN_STATES,
        verdict: str | None = None,
        search: str | None = None,
    ) -> list[CaseView]:
        """Cases in ``states``, oldest first; ``verdict`` the model's, ``search`` a part of
        the application id."""
        query = self._case_query().where(Case.status.in_(states))
        if verdict:
            query = query.where(Check.verdict == verdict)
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(Check.external_id.ilike(f"%{escaped}%", escape="\\"))
        with self._session() as s:
            rows = s.execute(query.order_by(Case.created_at, Case.id).limit(limit)).all()
            return [self._view(r) for r in rows]

    def count_open(self) -> int:
        """Cases waiting for a person (first look, second look or an admin)."""
        with self._session() as s:
            q = select(func.count(Case.id)).where(Case.status.in_(OPEN_STATES))
            return int(s.scalar(q) or 0)

    def claim(
        self,
        case_id: int,
        reviewer_id: int,
        lease: dt.timedelta,
        who: Who | None = None,
        role: str = "reviewer",
    ) -> bool:
        """Take (or extend) the lease on a case this reviewer may work on; False if it is
        someone else's, not in a state for their role, or their own first decision."""
        now = utcnow()
        with self._session.begin() as s:
            res = s.execute(
                update(Case)
                .where(Case.id == case_id, _claimable(reviewer_id, role, now))
                .values(claimed_by=reviewer_id, lease_until=now + lease)
            )
            if res.rowcount == 1:
                audit.append(s, who, "case.claim", case_id)
            return res.rowcount == 1

    def claim_next(
        self,
        reviewer_id: int,
        lease: dt.timedelta,
        who: Who | None = None,
        role: str = "reviewer",
    ) -> int | None:
        """Claim the oldest case this reviewer may take; None if there is none."""
        for _ in range(20):  # another reviewer may take a candidate between read and claim
            now = utcnow()
            with self._session() as s:
                candidate = s.scalar(
                    select(Case.id)
                    .where(_claimable(reviewer_id, role, now))
                    .order_by(Case.created_at, Case.id)
                    .limit(1)
                )
            if candidate is None:
                return None
            if self.claim(candidate, reviewer_id, lease, who, role):
                return candidate
        return None

    def release(self, case_id: int, reviewer_id: int, who: Who | None = None) -> None:
        with self._session.begin() as s:
            res = s.execute(
                update(Case)
                .where(
                    Case.id == case_id,
                    Case.claimed_by == reviewer_id,
                    Case.status.in_(OPEN_STATES),
                )
                .values(claimed_by=None, lease_until=None)
            )
            if res.rowcount == 1:
                audit.append(s, who, "case.release", case_id)

    def decide(
        self,
        case_id: int,
        reviewer_id: int,
        decision: str,
        comment: str = "",
        who: Who | None = None,
        *,
        reason: str | None = None,
        four_eyes: bool = False,
        notify: bool = False,
    ) -> str | None:
        """Record a decision by the holder of a live lease. Returns the case's new state:
        ``decided``, ``second`` (a first ``fake`` waiting for another reviewer) or
        ``escalated`` (the second reviewer disagreed); None if it was not theirs to decide.
        With ``notify``, a final decision queues its webhook in the same transaction (an
        outbox: no committed decision goes unannounced)."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
        if reason is not None and reason not in REASONS[decision]:
            raise ValueError(f"reason for {decision!r} must be one of {REASONS[decision]}")
        now = utcnow()
        comment = (comment or "").strip()[:2000] or None
        with self._session.begin() as s:
            found = s.execute(
                select(Case.status, Case.first_decision).where(Case.id == case_id)
            ).first()
            if found is None or found.status not in OPEN_STATES:
                return None
            state, first = found
            if state == "open" and decision == "fake" and four_eyes:
                new, values = (
                    "second",
                    {
                        "first_decision": decision,
                        "first_reason": reason,
                        "first_comment": comment,
                        "first_decided_by": reviewer_id,
                        "first_decided_at": now,
                        "claimed_by": None,
                    },
                )
            elif state == "second" and decision != first:
                new, values = "escalated", {"claimed_by": None}
            else:
                new, values = (
                    "decided",
                    {
                        "decision": decision,
                        "reason": reason,
                        "comment": comment,
                        "decided_by": reviewer_id,
                        "decided_at": now,
                    },
                )
            res = s.execute(
                update(Case)
                .where(
                    Case.id == case_id,
                    Case.status == state,  # compare and set on the state read above
                    Case.claimed_by == reviewer_id,
                    Case.lease_until >= now,
                )
                .values(status=new, lease_until=None, **values)
            )
            if res.rowcount != 1:
                return None
            detail = {"decision": decision, "reason": reason, "from": state, "to": new}
            audit.append(s, who, "case.decide", case_id, detail)
            if notify and new == "decided":
                webhooks.enqueue_decided(s, case_id)
            return new

    def decided_cases(self) -> Iterator[CaseView]:
        """Every decided case, oldest decision first."""
        with self._session() as s:
            for row in s.execute(
                self._case_query()
                .where(Case.status == "decided")
                .order_by(Case.decided_at, Case.id)
            ):
                yield self._view(row)

    def case_history(self, case_id: int) -> list[dict[str, object]]:
        """The audit events about this case, oldest first."""
        with self._session() as s:
            rows = s.scalars(
                select(audit.AuditEvent)
                .where(
                    audit.AuditEvent.target == str(case_id),
                    audit.AuditEvent.action.like("case.%"),
                )
                .order_by(audit.AuditEvent.seq)
            )
            return [audit.as_dict(r) for r in rows]
