"""The FastAPI application: `create_app(settings, session_factory)`.

Routers are mounted under /api/v1; /healthz and /metrics sit at the root where probes and
scrapers look. Operation ids are the route function names (`generate_unique_id_function`), so
generated clients keep stable method names across releases.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session, sessionmaker

from api.errors import install_error_handlers
from api.metrics import Metrics, MetricsMiddleware
from api.routers import audits, browse, datasets, findings, images, system, ui, webhooks
from auditor.config import Settings
from auditor.db import migrate
from auditor.db.session import make_engine, make_session_factory
from auditor.webhooks import WebhookDispatcher


def operation_id(route: APIRoute) -> str:
    return route.name


def create_app(
    settings: Settings,
    session_factory: sessionmaker[Session] | None = None,
    *,
    source_roots: list[Path] | None = None,
    dispatch_webhooks: bool = False,
) -> FastAPI:
    """`source_roots` are the folders datasets may be registered from (default: the data
    directory). `dispatch_webhooks` runs the webhook dispatcher thread while the app is up."""
    if session_factory is None:
        engine = make_engine(settings.database_url)
        migrate.ensure_schema(engine)
        session_factory = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = WebhookDispatcher(session_factory) if dispatch_webhooks else None
        if dispatcher is not None:
            dispatcher.start()
        yield
        if dispatcher is not None:
            dispatcher.stop()

    app = FastAPI(
        title="auditor",
        version="1",
        description="Hierarchy-aware auditing of image-classification datasets.",
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.source_roots = [Path(p) for p in (source_roots or [settings.data_dir])]
    app.state.metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    for router in (datasets.router, audits.router, findings.router, images.router, webhooks.router):
        app.include_router(router)
    app.include_router(browse.router)
    app.include_router(system.router)
    app.include_router(ui.router)
    return app


def bind_host(settings: Settings, host: str) -> str:
    """Without API keys the server must not be reachable from other machines: any non-loopback
    host is refused."""
    if settings.auth:
        return host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to listen on {host} with AUDITOR_AUTH=0; set AUDITOR_AUTH=1 and create "
            "keys with `auditor apikey create`, or bind 127.0.0.1"
        )
    return host
