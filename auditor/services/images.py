"""Serving image bytes: always through the dataset's Source, which refuses paths that leave the
source root, and only for images that decoded at ingest (an HTML file named .jpg is never served).
Thumbnails are cached under data_dir/thumbnails keyed by content hash, so copies share one file."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy.orm import Session

from auditor.config import Settings
from auditor.db.models import Dataset, Image, ImageStatus
from auditor.ingest.decode import UnreadableImage, decode_rgb
from auditor.ingest.sources import PathRefused, SourceError, open_source
from auditor.services import Forbidden, NotFound

THUMBNAIL_SIDE = 128
CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


@dataclass
class ImageBytes:
    data: bytes
    content_type: str
    etag: str


def servable_image(session: Session, image_id: int) -> tuple[Image, Dataset]:
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} does not exist")
    if image.status == ImageStatus.REFUSED:
        raise Forbidden(f"image {image_id} was refused at ingest: {image.error}")
    if image.status != ImageStatus.OK:
        raise NotFound(f"image {image_id} is {image.status}: {image.error}")
    return image, session.get(Dataset, image.dataset_id)


def read_original(image: Image, dataset: Dataset) -> bytes:
    try:
        return open_source(dataset.source_uri).read_bytes(image.path)
    except PathRefused as exc:
        raise Forbidden(f"image {image.id}: {exc}") from exc
    except (SourceError, OSError, KeyError) as exc:
        raise NotFound(f"image {image.id} is no longer in its source") from exc


def original(session: Session, image_id: int) -> ImageBytes:
    image, dataset = servable_image(session, image_id)
    data = read_original(image, dataset)
    content_type = CONTENT_TYPES.get(image.format or "", "application/octet-stream")
    return ImageBytes(data, content_type, hashlib.sha256(data).hexdigest())


def thumbnail(session: Session, settings: Settings, image_id: int) -> ImageBytes:
    image, dataset = servable_image(session, image_id)
    cache = Path(settings.data_dir) / "thumbnails"
    key = image.sha256 or f"image{image.id}"
    target = cache / f"{key}_{THUMBNAIL_SIDE}.png"
    etag = f"{key}-t{THUMBNAIL_SIDE}"
    if target.is_file():
        return ImageBytes(target.read_bytes(), "image/png", etag)
    try:
        picture = decode_rgb(read_original(image, dataset), settings.max_image_pixels)
    except UnreadableImage as exc:
        raise NotFound(f"image {image.id} no longer decodes: {exc}") from exc
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    cache.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cache, prefix=".thumb.")
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)
    os.replace(temporary, target)
    return ImageBytes(data, "image/png", etag)
