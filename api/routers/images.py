"""Image bytes and thumbnails, with validators for browser and proxy caches."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import Response

from api import schemas
from api.deps import Reader, SessionDep, SettingsDep, ensure_image
from api.errors import ERROR_RESPONSES
from api.routers import API_PREFIX
from auditor.db.models import Image
from auditor.services.images import ImageBytes, original, thumbnail

router = APIRouter(prefix=f"{API_PREFIX}/images", tags=["images"], responses=ERROR_RESPONSES)
ImageId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]
IMAGE_RESPONSES = {
    200: {"description": "The image", "content": {"image/*": {"schema": {"type": "string"}}}},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
}


def image_response(image: ImageBytes, if_none_match: str | None, auth_on: bool) -> Response:
    etag = f'"{image.etag}"'
    headers = {
        "ETag": etag,
        # Content-addressed, so it may be cached long; private when keys gate access.
        "Cache-Control": f"{'private' if auth_on else 'public'}, max-age=86400",
        "X-Content-Type-Options": "nosniff",
    }
    if if_none_match is not None and etag in [v.strip() for v in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(image.data, media_type=image.content_type, headers=headers)


@router.get("/{image_id}", response_class=Response, responses=IMAGE_RESPONSES)
def get_image(
    image_id: ImageId,
    principal: Reader,
    session: SessionDep,
    settings: SettingsDep,
    if_none_match: Annotated[str | None, Header(max_length=200)] = None,
):
    ensure_image(session, principal, session.get(Image, image_id))
    return image_response(original(session, image_id), if_none_match, settings.auth)


@router.get("/{image_id}/thumbnail", response_class=Response, responses=IMAGE_RESPONSES)
def get_thumbnail(
    image_id: ImageId,
    principal: Reader,
    session: SessionDep,
    settings: SettingsDep,
    if_none_match: Annotated[str | None, Header(max_length=200)] = None,
):
    ensure_image(session, principal, session.get(Image, image_id))
    return image_response(thumbnail(session, settings, image_id), if_none_match, settings.auth)
