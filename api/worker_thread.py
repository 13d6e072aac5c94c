"""The in-process worker of `auditor serve`: the embedded default needs no second process."""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session, sessionmaker

from auditor.config import Settings
from auditor.pipeline.worker import Worker


def start_worker_thread(factory: sessionmaker[Session], settings: Settings) -> Worker:
    worker = Worker(factory, settings)
    threading.Thread(target=worker.run_forever, name="audit-worker", daemon=True).start()
    return worker
