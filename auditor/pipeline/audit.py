"""Running one audit: stage by stage, each checkpointed, progress and heartbeat on the audit row.

A stage is recorded in `stage_timings` only after its output is safely on disk (and, for checks,
its findings committed), so an audit restarted after a crash resumes at the first unfinished stage.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from auditor.config import Settings
from auditor.db.models import Audit, AuditStatus, Dataset, utcnow
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.stages import STAGES, AuditCancelled, AuditContext

STAGE_OUTPUTS = {
    "ingest": "ingest.npz",
    "embed": "embed.npz",
    "predict": "predict.npz",
    "index": "index.npz",
    "hierarchy": "hierarchy.json",
    "checks": "checks.json",
    "vendors": "vendors.json",
    "summarise": "summary.json",
}
HEARTBEAT_SECONDS = 2.0

StageCallback = Callable[[str, float], None]


def create_audit(
    factory: sessionmaker[Session], dataset_id: int, parameters: dict[str, Any] | None = None
) -> int:
    with factory() as session, session.begin():
        if session.get(Dataset, dataset_id) is None:
            raise LookupError(f"dataset {dataset_id} does not exist")
        audit = Audit(dataset_id=dataset_id, parameters=parameters or {})
        session.add(audit)
        session.flush()
        return audit.id


class AuditInterrupted(Exception):
    """The worker must stop this audit now: it is shutting down or lost the audit's lease."""


class ProgressWriter:
    """Writes stage progress and the heartbeat at most every HEARTBEAT_SECONDS. Between batches it
    raises AuditCancelled when the row says cancelled, and AuditInterrupted when `interrupted()`
    says so or another worker has taken the audit over."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        audit_id: int,
        worker_id: str,
        on_stage: StageCallback | None,
        interrupted: Callable[[], str | None],
    ):
        self.factory = factory
        self.audit_id = audit_id
        self.worker_id = worker_id
        self.on_stage = on_stage
        self.interrupted = interrupted
        self.stage = ""
        self.base = 0.0
        self.share = 0.0
        self.last_write = 0.0

    def start_stage(self, stage: str, index: int) -> None:
        self.stage = stage
        self.base = index / len(STAGES)
        self.share = 1.0 / len(STAGES)
        self.write(0.0, force=True)

    def write(self, fraction: float, force: bool = False) -> None:
        if self.on_stage:
            self.on_stage(self.stage, fraction)
        reason = self.interrupted()
        if reason:
            raise AuditInterrupted(reason)
        now = time.monotonic()
        if not force and now - self.last_write < HEARTBEAT_SECONDS:
            return
        self.last_write = now
        with self.factory() as session, session.begin():
            audit = session.get(Audit, self.audit_id)
            if audit.status == AuditStatus.CANCELLED:
                raise AuditCancelled(f"audit {self.audit_id} was cancelled")
            if audit.worker_id != self.worker_id:
                raise AuditInterrupted(f"audit {self.audit_id} was taken over by {audit.worker_id}")
            audit.stage = self.stage
            audit.progress = round(self.base + self.share * min(max(fraction, 0.0), 1.0), 4)
            audit.heartbeat_at = utcnow()


def run_audit(
    factory: sessionmaker[Session],
    settings: Settings,
    audit_id: int,
    *,
    worker_id: str = "in-process",
    on_stage: StageCallback | None = None,
    interrupted: Callable[[], str | None] = lambda: None,
    record_failure: bool = True,
) -> Audit:
    """Run (or resume) an audit to completion. A failure is recorded on the row (unless the caller,
    a worker that retries, handles it) and re-raised."""
    with factory() as session, session.begin():
        audit = session.get(Audit, audit_id)
        dataset = session.get(Dataset, audit.dataset_id)
        audit.status = AuditStatus.RUNNING
        audit.worker_id = worker_id
        audit.started_at = audit.started_at or utcnow()
        audit.heartbeat_at = utcnow()
        audit.error = None
        ctx_values = (audit.dataset_id, dataset.source_uri, dict(audit.parameters))
        done = dict(audit.stage_timings)
    artifacts = AuditArtifacts(settings.data_dir, audit_id)
    progress = ProgressWriter(factory, audit_id, worker_id, on_stage, interrupted)
    ctx = AuditContext(factory, settings, audit_id, *ctx_values, artifacts, report=progress.write)
    try:
        for index, (stage, run_stage) in enumerate(STAGES):
            if stage in done and artifacts.path(STAGE_OUTPUTS[stage]).is_file():
                continue
            progress.start_stage(stage, index)
            started = time.perf_counter()
            run_stage(ctx)
            done[stage] = round(time.perf_counter() - started, 3)
            record_stage(factory, audit_id, worker_id, done)
        return complete_audit(factory, audit_id, artifacts.load_json("summary") or {})
    except (AuditCancelled, AuditInterrupted):
        raise
    except Exception as exc:
        if record_failure:
            fail_audit(factory, audit_id, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        raise


def record_stage(
    factory: sessionmaker[Session], audit_id: int, worker_id: str, timings: dict
) -> None:
    with factory() as session, session.begin():
        audit = session.get(Audit, audit_id)
        if audit.status == AuditStatus.CANCELLED:
            raise AuditCancelled(f"audit {audit_id} was cancelled")
        if audit.worker_id != worker_id:
            raise AuditInterrupted(f"audit {audit_id} was taken over by {audit.worker_id}")
        audit.stage_timings = dict(timings)
        audit.heartbeat_at = utcnow()


def complete_audit(factory: sessionmaker[Session], audit_id: int, summary: dict) -> Audit:
    with factory() as session, session.begin():
        audit = session.get(Audit, audit_id)
        audit.summary = summary
        audit.status = AuditStatus.COMPLETED
        audit.stage = "done"
        audit.progress = 1.0
        audit.finished_at = utcnow()
        return audit


def fail_audit(factory: sessionmaker[Session], audit_id: int, error: str, detail: str) -> None:
    with factory() as session, session.begin():
        audit = session.get(Audit, audit_id)
        audit.status = AuditStatus.FAILED
        audit.error = error
        audit.summary = {**audit.summary, "traceback": detail[-4000:]}
        audit.finished_at = utcnow()
