"""Webhook subscriptions and their delivery log (admin keys only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy import select

from api import schemas
from api.deps import Admin, SessionDep, ensure_dataset
from api.errors import ERROR_RESPONSES
from api.routers import API_PREFIX
from auditor.db.models import Webhook, WebhookDelivery
from auditor.services.datasets import get_dataset
from auditor.webhooks import get_webhook, register_webhook

router = APIRouter(prefix=f"{API_PREFIX}/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)
WebhookId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]


def webhook_dict(hook: Webhook) -> dict:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": hook.events,
        "dataset_id": hook.dataset_id,
        "active": hook.active,
        "created_at": hook.created_at,
    }


def visible_webhook(session, principal, webhook_id: int) -> Webhook:
    hook = get_webhook(session, webhook_id)
    if principal.dataset_id is not None and hook.dataset_id != principal.dataset_id:
        ensure_dataset(principal, -1, "webhook")
    return hook


@router.post("", status_code=201, response_model=schemas.WebhookCreated)
def create_webhook(body: schemas.WebhookCreate, principal: Admin, session: SessionDep):
    """Subscribe a URL; deliveries carry `X-Auditor-Signature: sha256=<HMAC of the body>`."""
    dataset_id = body.dataset_id or principal.dataset_id
    if dataset_id is not None:
        ensure_dataset(principal, dataset_id)
        get_dataset(session, dataset_id)
    hook = register_webhook(session, body.url, list(body.events), dataset_id)
    session.commit()
    return {**webhook_dict(hook), "secret": hook.secret}


@router.get("", response_model=schemas.WebhookList)
def list_webhooks(principal: Admin, session: SessionDep):
    query = select(Webhook).order_by(Webhook.id)
    if principal.dataset_id is not None:
        query = query.where(Webhook.dataset_id == principal.dataset_id)
    return {"items": [webhook_dict(h) for h in session.scalars(query)]}


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: WebhookId, principal: Admin, session: SessionDep):
    session.delete(visible_webhook(session, principal, webhook_id))
    session.commit()


@router.get("/{webhook_id}/deliveries", response_model=schemas.DeliveryList)
def deliveries(webhook_id: WebhookId, principal: Admin, session: SessionDep):
    visible_webhook(session, principal, webhook_id)
    rows = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(200)
    )
    return {
        "items": [
            {
                "id": d.id,
                "event": d.event,
                "status": d.status,
                "attempts": d.attempts,
                "last_status_code": d.last_status_code,
                "last_error": d.last_error,
                "created_at": d.created_at,
                "delivered_at": d.delivered_at,
            }
            for d in rows
        ]
    }
