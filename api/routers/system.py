"""Liveness and Prometheus metrics (outside /api/v1, where probes and scrapers expect them)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api import schemas
from api.deps import SessionDep
from api.errors import ErrorBody

router = APIRouter(
    tags=["system"],
    responses={500: {"model": ErrorBody, "description": "Database unreachable"}},
)


@router.get("/healthz", response_model=schemas.Health)
def healthz(session: SessionDep):
    session.execute(text("SELECT 1"))
    return {"status": "ok", "database": "ok"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request):
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
