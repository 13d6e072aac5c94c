"""What ingest found when it read an image file: the one vocabulary shared by the decoder, the
database column and the checks. A leaf module, so decoding (which runs in loader worker
processes) does not import the ORM."""

from __future__ import annotations

import enum


class ImageStatus(enum.StrEnum):
    OK = "ok"
    UNREADABLE = "unreadable"
    MISSING = "missing"
    REFUSED = "refused"
