"""Workers against real databases: exclusive claims, a worker killed with SIGKILL and another
finishing its audit, cancellation, retries with backoff, and schedules enqueuing once a period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from auditor.config import Settings
from auditor.db.models import Audit, Finding, FindingImage
from auditor.db.session import make_engine, make_session_factory
from auditor.demo import build_demo_dataset
from auditor.ingest.ingest import ingest
from auditor.pipeline.artifacts import AuditArtifacts
from auditor.pipeline.audit import STAGE_OUTPUTS, create_audit, run_audit
from auditor.pipeline.jobs import cancel_audit, claim_audit
from auditor.pipeline.scheduler import enqueue_due_audits, set_schedule
from auditor.pipeline.worker import Worker, wait_for_status

PARAMETERS = {"backbone": "trained", "epochs": 2}
LEASE_SECONDS = "4"


@pytest.fixture
def factory(committed_url):
    engine = make_engine(committed_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def digits(factory, tmp_path) -> int:
    root = tmp_path / "digits"
    build_demo_dataset(root, per_class=16, mislabel_rate=0.1)
    return ingest(factory, "digits", root, Settings(workers=1)).dataset_id


def findings_of(factory, audit_id: int) -> list[tuple]:
    with factory() as session:
        rows = session.execute(
            select(Finding.kind, Finding.score, Finding.severity, func.count(FindingImage.image_id))
            .join(FindingImage, FindingImage.finding_id == Finding.id)
            .where(Finding.audit_id == audit_id)
            .group_by(Finding.id)
        ).all()
        subjects = session.scalars(select(Finding.key).where(Finding.audit_id == audit_id)).all()
    assert len(subjects) == len(set(subjects)), "duplicated findings"
    keys = sorted(key.split(":", 1)[1] for key in subjects)
    return keys + sorted((kind, round(score, 5), severity, n) for kind, score, severity, n in rows)


def test_two_workers_never_claim_one_audit(factory, digits):
    audit_id = create_audit(factory, digits, PARAMETERS)
    claims: list[int | None] = []
    barrier = threading.Barrier(6)

    def claim(name: str) -> None:
        barrier.wait()
        claims.append(claim_audit(factory, name, lease_seconds=60))

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims, key=lambda c: c is None) == [audit_id] + [None] * 5
    with factory() as session:
        audit = session.get(Audit, audit_id)
        assert audit.status == "running" and audit.attempts == 1


def worker_process(url: str, data_dir: Path, worker_id: str, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "AUDITOR_DATABASE_URL": url,
        "AUDITOR_DATA_DIR": str(data_dir),
        "AUDITOR_WORKERS": "1",
        "AUDITOR_LEASE_SECONDS": LEASE_SECONDS,
        "AUDITOR_POLL_SECONDS": "0.5",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "auditor", "worker", "--id", worker_id, *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("committed_url", ["postgres"], indirect=True)
def test_killed_worker_is_replaced_and_findings_match_an_uninterrupted_run(
    factory, digits, committed_url, tmp_path
):
    reference = create_audit(factory, digits, PARAMETERS)
    run_audit(factory, Settings(data_dir=tmp_path / "reference", workers=1), reference)

    audit_id = create_audit(factory, digits, PARAMETERS)
    first = worker_process(committed_url, tmp_path / "shared", "first")
    deadline = time.monotonic() + 120
    stage = None
    while time.monotonic() < deadline and stage not in ("embed", "predict"):
        time.sleep(0.02)
        with factory() as session:
            stage = session.get(Audit, audit_id).stage
    assert stage in ("embed", "predict"), "the first worker never started the audit"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    # `--once` exits when nothing is claimable, so start the replacement after the dead
    # worker's lease has run out; a faster start-up would find the audit still leased.
    time.sleep(float(LEASE_SECONDS) + 1.0)

    second = worker_process(committed_url, tmp_path / "shared", "second", "--once")
    try:
        assert wait_for_status(factory, audit_id, timeout=300) == "completed", second.stderr
    finally:
        second.wait(timeout=60)
    with factory() as session:
        audit = session.get(Audit, audit_id)
        assert audit.worker_id == "second" and audit.attempts == 2
    assert findings_of(factory, audit_id) and findings_of(factory, audit_id) == findings_of(
        factory, reference
    )


def test_cancel_stops_a_running_audit_without_findings(factory, digits, tmp_path):
    audit_id = create_audit(factory, digits, {**PARAMETERS, "epochs": 30})
    worker = Worker(factory, Settings(data_dir=tmp_path, workers=1, lease_seconds=30), "w")
    thread = threading.Thread(target=worker.run_one)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with factory() as session:
            if session.get(Audit, audit_id).stage == "predict":
                break
        time.sleep(0.05)
    assert cancel_audit(factory, audit_id) == "cancelled"
    thread.join(timeout=240)
    assert not thread.is_alive()
    with factory() as session:
        audit = session.get(Audit, audit_id)
        assert audit.status == "cancelled"
        # Stopped inside the CNN's training, before the stage's 30 epochs wrote its output.
        assert "predict" not in audit.stage_timings
        assert (
            session.scalar(select(func.count(Finding.id)).where(Finding.audit_id == audit_id)) == 0
        )
    assert not AuditArtifacts(tmp_path, audit_id).path(STAGE_OUTPUTS["predict"]).exists()


def test_failures_retry_with_backoff_then_fail(factory, digits, tmp_path):
    audit_id = create_audit(factory, digits, {"backbone": "trained", "strategy": "no-such"})
    settings = Settings(data_dir=tmp_path, workers=1, max_attempts=2, retry_base_seconds=0)
    worker = Worker(factory, settings, "w")
    assert worker.run_one()
    with factory() as session:
        audit = session.get(Audit, audit_id)
        assert (audit.status, audit.attempts) == ("queued", 1)
        assert "no-such" in audit.error
    assert worker.run_one()
    with factory() as session:
        audit = session.get(Audit, audit_id)
        assert (audit.status, audit.attempts) == ("failed", 2)
    assert not worker.run_one()


def test_backoff_delays_the_next_claim(factory, digits, tmp_path):
    audit_id = create_audit(factory, digits, {"strategy": "no-such", "backbone": "trained"})
    settings = Settings(data_dir=tmp_path, workers=1, retry_base_seconds=3600)
    assert Worker(factory, settings, "w").run_one()
    assert claim_audit(factory, "other", lease_seconds=60) is None
    with factory() as session:
        assert session.get(Audit, audit_id).not_before is not None


def test_schedule_enqueues_exactly_once_per_period(factory, digits):
    schedule = set_schedule(factory, digits, interval_seconds=3600)
    due = schedule.next_run_at + timedelta(seconds=1)
    assert enqueue_due_audits(factory, due - timedelta(seconds=2)) == []

    results: list[list[int]] = []
    barrier = threading.Barrier(4)

    def poll() -> None:
        barrier.wait()
        results.append(enqueue_due_audits(factory, due))

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert enqueue_due_audits(factory, due + timedelta(seconds=10)) == []

    next_period = due + timedelta(seconds=3600)
    assert enqueue_due_audits(factory, next_period) == [], "one is still pending"
    with factory() as session, session.begin():
        for audit in session.scalars(select(Audit).where(Audit.dataset_id == digits)):
            audit.status = "completed"
    assert len(enqueue_due_audits(factory, next_period + timedelta(seconds=3600))) == 1
