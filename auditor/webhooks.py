"""Webhooks: events queued as delivery rows in the same transaction as the change they report,
then posted by a dispatcher with an HMAC-SHA256 signature and retried with exponential backoff.

Queuing in the database (an outbox) means an event is never lost when the process dies between
the change and the POST, and the delivery log doubles as the audit trail a subscriber can query.
Audit events are found by scanning finished audits, because audits finish in worker processes
that know nothing of webhooks; the unique (webhook, event_key) pair makes the scan idempotent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from auditor.db.models import Audit, AuditStatus, Webhook, WebhookDelivery, utcnow
from auditor.services import Invalid, NotFound

log = logging.getLogger(__name__)

EVENTS = ("audit.completed", "audit.failed", "finding.reviewed")
AUDIT_EVENTS = {AuditStatus.COMPLETED: "audit.completed", AuditStatus.FAILED: "audit.failed"}
SIGNATURE_HEADER = "X-Auditor-Signature"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def sign(secret: str, body: bytes) -> str:
    """The signature header value: `sha256=<hex HMAC of the raw body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


def register_webhook(
    session: Session, url: str, events: list[str], dataset_id: int | None = None
) -> Webhook:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("a webhook URL must be an absolute http(s) URL")
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise Invalid(f"events must be a non-empty subset of {', '.join(EVENTS)}")
    webhook = Webhook(
        url=url,
        events=sorted(set(events)),
        secret=secrets.token_hex(32),
        dataset_id=dataset_id,
    )
    session.add(webhook)
    session.flush()
    return webhook


def get_webhook(session: Session, webhook_id: int) -> Webhook:
    webhook = session.get(Webhook, webhook_id)
    if webhook is None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    return webhook


def subscribers(session: Session, event: str, dataset_id: int) -> list[Webhook]:
    hooks = session.scalars(select(Webhook).where(Webhook.active.is_(True)))
    return [
        hook for hook in hooks if event in hook.events and hook.dataset_id in (None, dataset_id)
    ]


def enqueue_event(
    session: Session, event: str, event_key: str, dataset_id: int, data: dict[str, Any]
) -> int:
    """Queue `event` for every subscribed webhook that has not had it yet; returns how many."""
    queued = 0
    for hook in subscribers(session, event, dataset_id):
        already = session.scalar(
            select(WebhookDelivery.id).where(
                WebhookDelivery.webhook_id == hook.id, WebhookDelivery.event_key == event_key
            )
        )
        if already is not None:
            continue
        payload = {"event": event, "created_at": utcnow().isoformat(), "data": data}
        session.add(
            WebhookDelivery(webhook_id=hook.id, event=event, event_key=event_key, payload=payload)
        )
        queued += 1
    session.flush()
    return queued


def collect_audit_events(session: Session) -> int:
    """Queue audit.completed / audit.failed for audits finished since each webhook was made."""
    queued = 0
    hooks = [
        h
        for h in session.scalars(select(Webhook).where(Webhook.active.is_(True)))
        if set(h.events) & set(AUDIT_EVENTS.values())
    ]
    for hook in hooks:
        query = select(Audit).where(
            Audit.status.in_(list(AUDIT_EVENTS)),
            Audit.finished_at.is_not(None),
            Audit.finished_at >= hook.created_at,
        )
        if hook.dataset_id is not None:
            query = query.where(Audit.dataset_id == hook.dataset_id)
        for audit in session.scalars(query):
            event = AUDIT_EVENTS[AuditStatus(audit.status)]
            if event in hook.events:
                queued += enqueue_event(
                    session, event, f"{event}:{audit.id}", audit.dataset_id, audit_event_data(audit)
                )
    return queued


def audit_event_data(audit: Audit) -> dict[str, Any]:
    return {
        "audit_id": audit.id,
        "dataset_id": audit.dataset_id,
        "status": audit.status,
        "findings": (audit.summary or {}).get("findings", {}),
        "error": audit.error,
    }


def delivery_body(delivery: WebhookDelivery) -> bytes:
    return json.dumps(
        {**delivery.payload, "delivery_id": delivery.id}, sort_keys=True, separators=(",", ":")
    ).encode()


def deliver_due(
    factory: sessionmaker[Session],
    *,
    now: datetime | None = None,
    max_attempts: int = 5,
    backoff_seconds: float = 10.0,
    timeout: float = 5.0,
    limit: int = 100,
) -> list[WebhookDelivery]:
    """POST every pending delivery that is due. A non-2xx answer or a network error schedules a
    retry after backoff * 2^(attempts-1); after `max_attempts` the delivery is marked failed."""
    now = now or utcnow()
    with factory() as session, session.begin():
        due = list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.id)
                .limit(limit)
            )
        )
        hooks = {d.webhook_id: session.get(Webhook, d.webhook_id) for d in due}
        requests = [(d.id, hooks[d.webhook_id].url, hooks[d.webhook_id].secret, d) for d in due]
        bodies = {d.id: delivery_body(d) for d in due}
    outcomes: dict[int, tuple[int | None, str | None]] = {}
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for delivery_id, url, secret, delivery in requests:
            body = bodies[delivery_id]
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(secret, body),
                "X-Auditor-Event": delivery.event,
                "X-Auditor-Delivery": str(delivery_id),
            }
            try:
                response = client.post(url, content=body, headers=headers)
                outcomes[delivery_id] = (response.status_code, None)
            except httpx.HTTPError as exc:
                outcomes[delivery_id] = (None, f"{type(exc).__name__}: {exc}"[:500])
    finished = []
    with factory() as session, session.begin():
        for delivery_id, (code, error) in outcomes.items():
            delivery = session.get(WebhookDelivery, delivery_id)
            delivery.attempts += 1
            delivery.last_status_code = code
            delivery.last_error = error if error else (None if code < 300 else f"HTTP {code}")
            if code is not None and 200 <= code < 300:
                delivery.status = DELIVERED
                delivery.delivered_at = utcnow()
            elif delivery.attempts >= max_attempts:
                delivery.status = FAILED
            else:
                delay = backoff_seconds * 2 ** (delivery.attempts - 1)
                delivery.next_attempt_at = now + timedelta(seconds=delay)
            finished.append(delivery)
    return finished


class WebhookDispatcher(threading.Thread):
    """Background loop of the API process: collect audit events, deliver what is due."""

    def __init__(self, factory: sessionmaker[Session], poll_seconds: float = 2.0) -> None:
        super().__init__(daemon=True, name="webhook-dispatcher")
        self.factory = factory
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.poll_seconds):
            try:
                with self.factory() as session, session.begin():
                    collect_audit_events(session)
                deliver_due(self.factory)
            except Exception:  # the database may be briefly away; the outbox keeps the events
                log.warning("webhook dispatch failed", exc_info=True)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
