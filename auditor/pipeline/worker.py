"""`auditor worker`: claim queued audits from the database and run them, one at a time.

A heartbeat thread renews the lease while the audit runs, so a long CNN training step without
progress callbacks is not mistaken for a dead worker; a worker killed outright stops renewing and
another worker takes the audit over after the lease, resuming from its checkpoints. SIGTERM and
SIGINT finish the current batch, hand the audit back to the queue and exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from auditor.config import Settings
from auditor.db.models import Audit, AuditStatus, utcnow
from auditor.pipeline.audit import AuditInterrupted, run_audit
from auditor.pipeline.jobs import claim_audit, release_audit, retry_or_fail
from auditor.pipeline.scheduler import enqueue_due_audits
from auditor.pipeline.stages import AuditCancelled

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat(threading.Thread):
    """Renews one audit's lease every lease/4 seconds; notes when the lease was lost."""

    def __init__(self, factory: sessionmaker[Session], audit_id: int, worker_id: str, every: float):
        super().__init__(daemon=True, name=f"heartbeat-{audit_id}")
        self.factory, self.audit_id, self.worker_id, self.every = (
            factory,
            audit_id,
            worker_id,
            every,
        )
        self.finished = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.finished.wait(self.every):
            try:
                with self.factory() as session, session.begin():
                    renewed = session.execute(
                        update(Audit)
                        .where(
                            Audit.id == self.audit_id,
                            Audit.worker_id == self.worker_id,
                            Audit.status == AuditStatus.RUNNING,
                        )
                        .values(heartbeat_at=utcnow())
                        .execution_options(synchronize_session=False)
                    )
                if renewed.rowcount == 0:
                    self.lost = True
                    return
            except Exception:  # a database hiccup: try again next beat, the lease has slack
                log.warning("heartbeat for audit %s failed", self.audit_id, exc_info=True)

    def stop(self) -> None:
        self.finished.set()
        self.join(timeout=5)


class Worker:
    def __init__(
        self, factory: sessionmaker[Session], settings: Settings, worker_id: str | None = None
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.stopping = threading.Event()

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())

    def run_forever(self, max_audits: int | None = None, exit_when_idle: bool = False) -> int:
        """Work until stopped (or `max_audits` done, or idle when `exit_when_idle`)."""
        done = 0
        while not self.stopping.is_set():
            enqueue_due_audits(self.factory)
            if self.run_one():
                done += 1
                if max_audits is not None and done >= max_audits:
                    break
            elif exit_when_idle:
                break
            else:
                self.stopping.wait(self.settings.poll_seconds)
        return done

    def run_one(self) -> bool:
        """Claim and run one audit; False when there was nothing to claim."""
        audit_id = claim_audit(self.factory, self.worker_id, self.settings.lease_seconds)
        if audit_id is None:
            return False
        heartbeat = Heartbeat(
            self.factory, audit_id, self.worker_id, self.settings.lease_seconds / 4
        )
        heartbeat.start()

        def interrupted() -> str | None:
            if self.stopping.is_set():
                return "worker is shutting down"
            if heartbeat.lost:
                return "lease lost"
            return None

        try:
            run_audit(
                self.factory,
                self.settings,
                audit_id,
                worker_id=self.worker_id,
                interrupted=interrupted,
                record_failure=False,
            )
        except AuditCancelled:
            log.info("audit %s cancelled", audit_id)
        except AuditInterrupted as exc:
            log.info("audit %s interrupted: %s", audit_id, exc)
            if self.stopping.is_set():
                release_audit(self.factory, audit_id, self.worker_id)
        except Exception as exc:
            status = retry_or_fail(
                self.factory,
                audit_id,
                self.worker_id,
                f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}",
                self.settings,
            )
            log.warning("audit %s raised %s; now %s", audit_id, exc, status)
        finally:
            heartbeat.stop()
        return True


def wait_for_status(factory: sessionmaker[Session], audit_id: int, timeout: float) -> str:
    """Poll until the audit is finished (for tests and the CLI); returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        with factory() as session:
            status = session.get(Audit, audit_id).status
        if status in (AuditStatus.COMPLETED, AuditStatus.FAILED, AuditStatus.CANCELLED):
            return status
        if time.monotonic() > deadline:
            return status
        time.sleep(0.5)
