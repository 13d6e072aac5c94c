"""The `vendors` analysis of an audit, from its stored labels, findings and probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from auditor.db.queries import current_vendor_labels, flagged_image_ids
from auditor.vendors.estimate import VendorLabels, vendor_estimates


def vendor_membership(
    session: Session, dataset_id: int, image_ids: np.ndarray
) -> np.ndarray | None:
    """(images, vendors) bool: which vendors' current labels each image carries; None when no
    image has a vendor label."""
    row_of = {int(image_id): row for row, image_id in enumerate(image_ids)}
    pairs = [
        (row_of[image_id], vendor)
        for image_id, vendor, *_ in current_vendor_labels(session, dataset_id)
        if image_id in row_of
    ]
    if not pairs:
        return None
    vendors = sorted({vendor for _, vendor in pairs})
    membership = np.zeros((len(image_ids), len(vendors)), dtype=bool)
    for row, vendor in pairs:
        membership[row, vendors.index(vendor)] = True
    return membership


def vendor_analysis(
    session: Session,
    dataset_id: int,
    audit_id: int,
    image_ids: np.ndarray,
    class_names: list[str],
    probabilities: np.ndarray,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Rates for the vendors whose current labels the audited images (`image_ids`, aligned with
    the probability rows) carry; empty when no image has a vendor label. `held_out` is
    (probabilities, covered) from heads that never saw the row's vendors."""
    row_of = {int(image_id): row for row, image_id in enumerate(image_ids)}
    class_index = {name: i for i, name in enumerate(class_names)}
    vendor_rows = [row for row in current_vendor_labels(session, dataset_id) if row[0] in row_of]
    if not vendor_rows:
        return {}
    vendor_labels = VendorLabels(
        rows=np.array([row_of[image_id] for image_id, *_ in vendor_rows], dtype=np.int64),
        classes=np.array([class_index.get(name, -1) for _, _, name, _, _ in vendor_rows]),
        vendors=[vendor for _, vendor, *_ in vendor_rows],
        batches=[batch or "default" for *_, batch, _ in vendor_rows],
        batch_ids=[batch_id for *_, batch_id in vendor_rows],
    )
    flagged = flagged_image_ids(session, audit_id, "mislabel")
    flagged_rows = np.array([int(image_id) in flagged for image_id in image_ids], dtype=bool)
    return vendor_estimates(
        probabilities, vendor_labels, class_names, flagged_rows, held_out=held_out
    )
