"""Periodic audits: each worker loop enqueues the audits whose schedule is due.

A due schedule row is locked (FOR UPDATE SKIP LOCKED on PostgreSQL; the write lock on SQLite) and
advanced to its next time in the same transaction that enqueues the audit, so however many workers
poll, a period yields exactly one audit; and none is added while one for the dataset is pending.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from croniter import croniter
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from auditor.db.models import Audit, AuditStatus, Dataset, Schedule, utcnow


class ScheduleError(ValueError):
    """An invalid schedule (bad cron expression, no period, unknown dataset)."""


def next_run(cron: str | None, interval_seconds: int | None, after: datetime) -> datetime:
    if cron:
        return croniter(cron, after).get_next(datetime)
    return after + timedelta(seconds=interval_seconds)


def set_schedule(
    factory: sessionmaker[Session],
    dataset_id: int,
    *,
    cron: str | None = None,
    interval_seconds: int | None = None,
    parameters: dict | None = None,
) -> Schedule:
    """Create or replace the dataset's schedule; its first run is one period from now."""
    if (cron is None) == (interval_seconds is None):
        raise ScheduleError("give exactly one of a cron expression or an interval")
    if cron is not None and not croniter.is_valid(cron):
        raise ScheduleError(f"invalid cron expression {cron!r}")
    if interval_seconds is not None and interval_seconds < 60:
        raise ScheduleError("the interval must be at least 60 seconds")
    with factory() as session, session.begin():
        if session.get(Dataset, dataset_id) is None:
            raise ScheduleError(f"dataset {dataset_id} does not exist")
        schedule = session.scalar(select(Schedule).where(Schedule.dataset_id == dataset_id))
        if schedule is None:
            schedule = Schedule(dataset_id=dataset_id)
            session.add(schedule)
        schedule.cron, schedule.interval_seconds = cron, interval_seconds
        schedule.parameters = parameters or {}
        schedule.enabled = True
        schedule.next_run_at = next_run(cron, interval_seconds, utcnow())
        session.flush()
        session.expunge(schedule)
        return schedule


def remove_schedule(factory: sessionmaker[Session], dataset_id: int) -> bool:
    with factory() as session, session.begin():
        schedule = session.scalar(select(Schedule).where(Schedule.dataset_id == dataset_id))
        if schedule is None:
            return False
        session.delete(schedule)
        return True


def enqueue_due_audits(factory: sessionmaker[Session], now: datetime | None = None) -> list[int]:
    """Enqueue one audit per due schedule (none while the dataset has one pending)."""
    now = now or utcnow()
    enqueued = []
    with factory() as session, session.begin():
        due = session.scalars(
            select(Schedule)
            .where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
            .with_for_update(skip_locked=True)
        ).all()
        for schedule in due:
            advanced = session.execute(
                update(Schedule)
                .where(Schedule.id == schedule.id, Schedule.next_run_at == schedule.next_run_at)
                .values(
                    next_run_at=next_run(schedule.cron, schedule.interval_seconds, now),
                    last_enqueued_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if advanced.rowcount != 1:
                continue
            pending = session.scalar(
                select(Audit.id).where(
                    Audit.dataset_id == schedule.dataset_id,
                    Audit.status.in_([AuditStatus.QUEUED, AuditStatus.RUNNING]),
                )
            )
            if pending is not None:
                continue
            audit = Audit(
                dataset_id=schedule.dataset_id,
                parameters={**schedule.parameters, "scheduled": True},
            )
            session.add(audit)
            session.flush()
            enqueued.append(audit.id)
    return enqueued
