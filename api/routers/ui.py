"""The review page: one HTML file and its scripts and styles under api/static, served as they
are (no build step); the page itself talks only to the REST API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from auditor.services import NotFound

STATIC = Path(__file__).resolve().parent.parent / "static"
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The page loads nothing from elsewhere; images come from the API on the same origin.
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'",
}

router = APIRouter(include_in_schema=False)


def static_file(name: str) -> FileResponse:
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file() or path.suffix not in TYPES:
        raise NotFound("no such file")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)


@router.get("/")
def page() -> FileResponse:
    return static_file("index.html")


@router.get("/static/{name:path}")
def asset(name: str) -> FileResponse:
    return static_file(name)
