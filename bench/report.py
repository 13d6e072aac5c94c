"""Where benchmark scripts put their results (one Markdown file each under bench/results/), and
what they read back from an audit to score it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.db.models import Finding, FindingImage, Image

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, lines: list[str]) -> Path:
    """Write `lines` to bench/results/`name` and echo them, so a run shows what it recorded."""
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / name
    target.write_text(text)
    print(text)
    return target


def image_paths(session: Session, image_ids: Iterable[int]) -> list[str]:
    """The paths of `image_ids`, in their order."""
    ids = [int(i) for i in image_ids]
    path_of = dict(session.execute(select(Image.id, Image.path).where(Image.id.in_(ids))).all())
    return [path_of[i] for i in ids]


def flagged_paths(session: Session, audit_id: int, kind: str) -> set[str]:
    """Paths of the images the audit's findings of `kind` name, to compare with a known truth."""
    return set(
        session.scalars(
            select(Image.path)
            .join(FindingImage, FindingImage.image_id == Image.id)
            .join(Finding, Finding.id == FindingImage.finding_id)
            .where(Finding.audit_id == audit_id, Finding.kind == kind)
        )
    )
