"""Audit jobs in the database: claiming, leases, retries and cancellation.

A worker claims the oldest claimable audit in one transaction: queued (and past any retry backoff),
or running with a heartbeat older than the lease, which means its worker died. On PostgreSQL the
candidate row is locked with FOR UPDATE SKIP LOCKED so concurrent workers pick different audits; on
SQLite the conditional UPDATE takes the database write lock, so a second claimant sees the row
already taken and gets nothing. Either way two workers never run one audit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from auditor.config import Settings
from auditor.db.models import Audit, AuditStatus, utcnow


def claimable(now: datetime, lease_seconds: float):
    expired = now - timedelta(seconds=lease_seconds)
    return or_(
        and_(
            Audit.status == AuditStatus.QUEUED,
            or_(Audit.not_before.is_(None), Audit.not_before <= now),
        ),
        and_(Audit.status == AuditStatus.RUNNING, Audit.heartbeat_at < expired),
    )


def claim_audit(factory: sessionmaker[Session], worker_id: str, lease_seconds: float) -> int | None:
    """Take the next audit for `worker_id`; None when there is nothing to do."""
    now = utcnow()
    with factory() as session, session.begin():
        candidate = (
            select(Audit.id)
            .where(claimable(now, lease_seconds))
            .order_by(Audit.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        audit_id = session.scalar(candidate)
        if audit_id is None:
            return None
        taken = session.execute(
            update(Audit)
            .where(Audit.id == audit_id, claimable(now, lease_seconds))
            .values(
                status=AuditStatus.RUNNING,
                worker_id=worker_id,
                heartbeat_at=now,
                attempts=Audit.attempts + 1,
                not_before=None,
            )
            .execution_options(synchronize_session=False)
        )
        return audit_id if taken.rowcount == 1 else None


def retry_or_fail(
    factory: sessionmaker[Session], audit_id: int, worker_id: str, error: str, settings: Settings
) -> str:
    """After an error: back to the queue with exponential backoff, or failed after the last try."""
    with factory() as session, session.begin():
        audit = session.get(Audit, audit_id)
        if audit.worker_id != worker_id or audit.status == AuditStatus.CANCELLED:
            return audit.status
        audit.error = error
        if audit.attempts < settings.max_attempts:
            delay = settings.retry_base_seconds * 2 ** (audit.attempts - 1)
            audit.status = AuditStatus.QUEUED
            audit.not_before = utcnow() + timedelta(seconds=delay)
        else:
            audit.status = AuditStatus.FAILED
            audit.finished_at = utcnow()
        audit.worker_id = None
        return audit.status


def release_audit(factory: sessionmaker[Session], audit_id: int, worker_id: str) -> None:
    """Hand a running audit back to the queue (worker shutting down); its checkpoints remain."""
    with factory() as session, session.begin():
        session.execute(
            update(Audit)
            .where(
                Audit.id == audit_id,
                Audit.worker_id == worker_id,
                Audit.status == AuditStatus.RUNNING,
            )
            .values(status=AuditStatus.QUEUED, worker_id=None, attempts=Audit.attempts - 1)
            .execution_options(synchronize_session=False)
        )


def cancel_audit(factory: sessionmaker[Session], audit_id: int) -> str:
    """Cancel a queued or running audit; its worker stops at the next batch."""
    with factory() as session, session.begin():
        audit = session.get(Audit, audit_id)
        if audit is None:
            raise LookupError(f"audit {audit_id} does not exist")
        if audit.status in (AuditStatus.QUEUED, AuditStatus.RUNNING):
            audit.status = AuditStatus.CANCELLED
            audit.finished_at = utcnow()
        return audit.status
