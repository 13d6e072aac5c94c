"""Planted copies under crops, a mirror and JPEG recompression, through the real pipeline: found,
with label conflicts and a train/test leak named, and distinct images left alone."""

from __future__ import annotations

import csv
import io

import numpy as np
from PIL import Image
from sqlalchemy import select

from auditor.config import Settings
from auditor.db.models import Finding, FindingImage
from auditor.db.models import Image as ImageRow
from auditor.ingest.ingest import ingest
from auditor.pipeline.audit import create_audit, run_audit
from auditor.report import render_report
from tests.corpus import scene


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_planted_copies_are_found_and_distinct_images_are_not(session_factory, tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "scenes"
    root.mkdir()
    rows = []
    originals = [scene(rng) for _ in range(60)]
    for index, picture in enumerate(originals):
        picture.save(root / f"{index:03d}.png")
        rows.append({"path": f"{index:03d}.png", "label": f"c{index % 3}", "split": "train"})
    copies = {
        "crop.png": (0, originals[0].crop((1, 1, 31, 31)).resize((32, 32)), "c0", "train"),
        # 81% of the side, in a corner: its whole thumbnail is far from the original's (0.92).
        "deep_crop.png": (5, originals[5].crop((6, 0, 32, 26)).resize((32, 32)), "c2", "train"),
        "mirror.png": (1, originals[1].transpose(Image.FLIP_LEFT_RIGHT), "c1", "train"),
        "jpeg.jpg": (2, jpeg(originals[2], 40), "c2", "train"),
        "conflict.png": (3, originals[3].transpose(Image.FLIP_LEFT_RIGHT), "c1", "train"),
        "leak.jpg": (4, jpeg(originals[4], 60), "c1", "test"),
    }
    for name, (_, picture, label, split) in copies.items():
        picture.save(root / name)
        rows.append({"path": name, "label": label, "split": split})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)

    settings = Settings(data_dir=tmp_path / "data", workers=1)
    dataset_id = ingest(session_factory, "scenes", manifest, settings).dataset_id
    audit_id = create_audit(session_factory, dataset_id, {"backbone": "trained", "epochs": 1})
    run_audit(session_factory, settings, audit_id)

    with session_factory() as session:
        groups: dict[str, list[frozenset]] = {}
        for finding in session.scalars(select(Finding).where(Finding.audit_id == audit_id)):
            paths = session.scalars(
                select(ImageRow.path)
                .join(FindingImage, FindingImage.image_id == ImageRow.id)
                .where(FindingImage.finding_id == finding.id)
            ).all()
            groups.setdefault(finding.kind, []).append(frozenset(paths))
    planted = {frozenset({f"{original:03d}.png", name}) for name, (original, *_) in copies.items()}
    assert set(groups["near_duplicate"]) == planted
    assert groups["label_conflict"] == [frozenset({"003.png", "conflict.png"})]
    assert groups["split_leak"] == [frozenset({"004.png", "leak.jpg"})]
    # The report names each member's label and the member to keep.
    with session_factory() as session:
        report = render_report(session, audit_id)
    conflict = report[report.index("<h3>label_conflict</h3>") :]
    conflict = conflict[: conflict.index("</div></div>")]
    assert "003.png &middot; c0" in conflict and "conflict.png &middot; c1" in conflict
    assert conflict.count("&middot; <b>keep</b>") == 1
