"""Vendor deliveries, error-rate estimates, review memory across audits and audit diffs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from auditor.checks.base import FindingDraft
from auditor.config import Settings
from auditor.db.findings import save_findings
from auditor.db.models import Audit, AuditStatus, Finding, Image, utcnow
from auditor.demo import build_demo_dataset
from auditor.ingest.ingest import ingest
from auditor.ingest.sources import Delivery
from auditor.noise import fit_noise_model
from auditor.pipeline.audit import create_audit, run_audit
from auditor.services.diff import audit_diff
from auditor.services.reviews import ReviewRequest, review_finding
from auditor.services.vendors import vendor_report
from auditor.vendors import (
    VendorLabels,
    caution,
    method_line,
    vendor_chart,
    vendor_csv,
    vendor_estimates,
)
from auditor.vendors.estimate import held_out_training_labels, wilson_interval


def synthetic_vendors(seed: int = 0, n: int = 6000, rates=(0.05, 0.15, 0.35)):
    """Three vendors with known error rates on disjoint thirds, confusing neighbouring classes as
    people do. The model's posterior over the true class is right about 85 % of the time; like a
    network trained on noisy labels, it reports it softened (its square root, renormalised)."""
    rng = np.random.default_rng(seed)
    k = 10
    truth = rng.integers(0, k, n)
    vendor = np.arange(n) % 3
    given = truth.copy()
    for v, rate in enumerate(rates):
        wrong = (vendor == v) & (rng.random(n) < rate)
        given[wrong] = (truth[wrong] + rng.choice([-1, 1, 2], wrong.sum())) % k
    signal, spread = 4.0, 1.5
    scores = rng.normal(0, spread, (n, k))
    scores[np.arange(n), truth] += signal
    # The exact posterior of the true class given these scores (Gaussian class evidence).
    logits = scores * signal / spread**2
    posterior = np.exp(logits - logits.max(axis=1, keepdims=True))
    posterior /= posterior.sum(axis=1, keepdims=True)
    softened = np.sqrt(posterior) / np.sqrt(posterior).sum(axis=1, keepdims=True)
    true_rates = [float((given[vendor == v] != truth[vendor == v]).mean()) for v in range(3)]
    return softened, given, truth, vendor, true_rates


def vendor_labels_of(given, vendor, names=("good", "fair", "poor")) -> VendorLabels:
    return VendorLabels(
        rows=np.arange(len(given)),
        classes=given,
        vendors=[names[v] for v in vendor],
        batches=[f"b{i % 2}" for i in range(len(given))],
        batch_ids=[1 + 10 * int(v) + i % 2 for i, v in enumerate(vendor)],
    )


def test_estimates_recover_known_vendor_error_rates():
    probabilities, given, truth, vendor, true_rates = synthetic_vendors()
    assert 0.8 < (probabilities.argmax(axis=1) == truth).mean() < 0.9
    flagged = probabilities[np.arange(len(given)), given] < 0.2
    payload = vendor_estimates(
        probabilities, vendor_labels_of(given, vendor), [str(c) for c in range(10)], flagged
    )
    rows = {row["vendor"]: row for row in payload["vendors"]}
    for name, true in zip(("good", "fair", "poor"), true_rates, strict=True):
        row = rows[name]
        assert abs(row["estimated_error_rate"] - true) < 0.03, (name, row, true)
        assert row["ci_low"] <= row["estimated_error_rate"] <= row["ci_high"]
        assert row["images"] == 2000
    estimated = [rows[name]["estimated_error_rate"] for name in ("good", "fair", "poor")]
    assert estimated == sorted(estimated)
    assert len(payload["batches"]) == 6 and {r["batch"] for r in payload["batches"]} == {"b0", "b1"}
    assert sum(r["images"] for r in payload["vendor_classes"]) == len(given)
    assert payload["agreement"] == []


@pytest.mark.parametrize("power", [2, 4])
def test_fitted_sharpness_undoes_how_far_the_model_was_softened(power):
    """Given held-out probabilities, the sharpness is fitted by likelihood: it recovers the power
    the model's confidence was softened by, and the rates stay right where the fixed default
    (2) would read too little of the doubt as noise at power 4."""
    exact, given, _, vendor, true_rates = synthetic_vendors()
    softened = exact ** (2 / power)
    softened /= softened.sum(axis=1, keepdims=True)
    names, classes = [str(c) for c in range(10)], vendor_labels_of(given, vendor)
    unflagged = np.zeros(len(given), bool)
    covered = np.ones(len(given), bool)
    fitted = vendor_estimates(softened, classes, names, unflagged, held_out=(softened, covered))
    fixed = vendor_estimates(softened, classes, names, unflagged)
    assert fitted["sharpness_fitted"] and fitted["held_out_share"] == 1.0
    assert abs(fitted["sharpness"] - power) < 0.4
    assert not fixed["sharpness_fitted"] and fixed["sharpness"] == 2.0
    truth = dict(zip(("good", "fair", "poor"), true_rates, strict=True))
    for row in fitted["vendors"]:
        assert abs(row["estimated_error_rate"] - truth[row["vendor"]]) < 0.02, row
    if power == 4:
        worst = max(abs(r["estimated_error_rate"] - truth[r["vendor"]]) for r in fixed["vendors"])
        assert worst > 0.04


def vendors_by_difficulty(hard_errors: bool, seed: int = 0, n: int = 6000):
    """Three vendors (5, 15, 35 % wrong) on images of varied difficulty, with the exact class
    posterior softened as in `synthetic_vendors`. With `hard_errors` each vendor errs in
    proportion to how unsure the exact posterior is, as people do; otherwise uniformly."""
    rng = np.random.default_rng(seed)
    k, spread = 10, 1.5
    truth, vendor = rng.integers(0, k, n), np.arange(n) % 3
    signal = rng.uniform(1.0, 6.0, n)
    scores = rng.normal(0, spread, (n, k))
    scores[np.arange(n), truth] += signal
    logits = scores * signal[:, None] / spread**2
    posterior = np.exp(logits - logits.max(axis=1, keepdims=True))
    posterior /= posterior.sum(axis=1, keepdims=True)
    doubt = 1.05 - posterior.max(axis=1) if hard_errors else np.ones(n)
    given = truth.copy()
    for v, rate in enumerate((0.05, 0.15, 0.35)):
        chance = rate * doubt / doubt[vendor == v].mean()
        wrong = (vendor == v) & (rng.random(n) < chance)
        given[wrong] = (truth[wrong] + rng.choice([-1, 1, 2], wrong.sum())) % k
    softened = np.sqrt(posterior) / np.sqrt(posterior).sum(axis=1, keepdims=True)
    true_rates = {
        name: float((given[vendor == v] != truth[vendor == v]).mean())
        for v, name in enumerate(("good", "fair", "poor"))
    }
    return softened, given, vendor, true_rates


@pytest.mark.parametrize("hard_errors", [True, False])
def test_error_rates_that_follow_image_difficulty_get_confidence_strata(hard_errors):
    """Where vendors err mostly on the images the model is unsure of, a class-conditional model
    reads those errors as the model's doubt and puts the noisiest vendor far too low; BIC then
    picks error rates per confidence stratum, which recover every vendor. Where errors are
    uniform, the extra terms do not pay for themselves and the plain model stays."""
    probabilities, given, vendor, truth = vendors_by_difficulty(hard_errors)
    names, labels = [str(c) for c in range(10)], vendor_labels_of(given, vendor)
    covered = np.ones(len(given), bool)
    payload = vendor_estimates(
        probabilities, labels, names, np.zeros(len(given), bool), (probabilities, covered)
    )
    assert payload["confidence_strata"] == (3 if hard_errors else 1), payload["noise_model_bic"]
    for row in payload["vendors"]:
        assert abs(row["estimated_error_rate"] - truth[row["vendor"]]) < 0.03, row
    if hard_errors:
        rows = np.arange(len(given))
        plain = fit_noise_model(probabilities, rows, vendor, given, payload["sharpness"])
        wrong = 1.0 - plain.posterior[rows, given]
        assert truth["poor"] - wrong[vendor == 2].mean() > 0.05


def test_overlapping_vendors_are_estimated_from_their_agreement():
    """Three vendors label the same images and the model knows nothing (uniform probabilities):
    the rates come from how the vendors agree, as in Dawid and Skene's setting."""
    rng = np.random.default_rng(1)
    n, k, rates = 2000, 10, (0.05, 0.15, 0.35)
    truth = rng.integers(0, k, n)
    classes, vendors = [], []
    for name, rate in zip("abc", rates, strict=True):
        wrong = rng.random(n) < rate
        classes.append(np.where(wrong, (truth + rng.integers(1, k, n)) % k, truth))
        vendors += [name] * n
    labels = VendorLabels(
        rows=np.tile(np.arange(n), 3),
        classes=np.concatenate(classes),
        vendors=vendors,
        batches=["x"] * 3 * n,
        batch_ids=[None] * 3 * n,
    )
    payload = vendor_estimates(
        np.full((n, k), 1 / k), labels, [str(c) for c in range(k)], np.zeros(n, bool)
    )
    estimated = {row["vendor"]: row["estimated_error_rate"] for row in payload["vendors"]}
    for name, labels_of in zip("abc", classes, strict=True):
        assert abs(estimated[name] - (labels_of != truth).mean()) < 0.03, estimated
    agreement = {(r["vendor_a"], r["vendor_b"]): r for r in payload["agreement"]}
    assert set(agreement) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert all(r["images"] == n for r in agreement.values())
    assert agreement[("a", "b")]["agreement"] > agreement[("b", "c")]["agreement"]


@pytest.mark.parametrize(("n", "learned_from"), [(1500, 1000), (9000, 6000)])
def test_estimates_from_models_that_learned_from_few_labels_carry_a_caution(n, learned_from):
    """Each vendor's labels are judged by a head fitted on the other two vendors' rows, so it
    learned from two thirds of them; under 5,000 labels the report says the rates run together."""
    probabilities, given, _, vendor, _ = synthetic_vendors(n=n)
    names = [str(c) for c in range(10)]
    covered = np.ones(n, bool)
    report = vendor_estimates(
        probabilities,
        vendor_labels_of(given, vendor),
        names,
        np.zeros(n, bool),
        held_out=(probabilities, covered),
    )
    assert report["held_out_training_labels"] == learned_from
    warning = caution(report)
    if learned_from < 5000:
        assert warning is not None and f"only {learned_from:,} labels" in warning
    else:
        assert warning is None
    without_held_out = vendor_estimates(
        probabilities, vendor_labels_of(given, vendor), names, np.zeros(n, bool)
    )
    assert without_held_out["held_out_training_labels"] is None
    assert caution(without_held_out) is None


def test_held_out_training_labels_exclude_every_vendor_of_a_shared_image():
    """An image labeled by two vendors is judged by a head that saw neither, which learned from
    fewer rows than either vendor's own head."""
    vendors = ["a", "b", "a", "b", "c", "c"]
    labels = VendorLabels(
        rows=np.array([0, 0, 1, 2, 3, 4]),
        classes=np.zeros(6, dtype=np.int64),
        vendors=vendors,
        batches=["x"] * 6,
        batch_ids=[None] * 6,
    )
    index = np.array([sorted(set(vendors)).index(v) for v in vendors])
    covered = np.ones(8, bool)
    # Rows: 0 a+b, 1 a, 2 b, 3-4 c, 5-7 no vendor; the a+b head learned from rows 3-7, every
    # other head from six rows.
    assert held_out_training_labels(8, labels, index, covered) == 5
    covered[0] = False
    assert held_out_training_labels(8, labels, index, covered) == 6


def test_wilson_interval_bounds():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.0 < high < 0.1
    low, high = wilson_interval(50, 100)
    assert low < 0.5 < high and high - low < 0.2


def write_delivery(path: Path, rows: list[tuple[str, str]], vendor=None, batch=None) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "vendor", "batch"])
        for image, label in rows:
            writer.writerow([image, label, vendor or "", batch or ""])
    return path


def draft(kind: str, subject: str, image_ids: list[int], label: str = "one") -> FindingDraft:
    return FindingDraft(
        kind=kind, subject=subject, image_ids=image_ids, score=0.9, given_label=label
    )


def completed_audit(factory, dataset_id: int) -> int:
    with factory() as session, session.begin():
        audit = Audit(
            dataset_id=dataset_id,
            status=AuditStatus.COMPLETED,
            finished_at=utcnow(),
            progress=1.0,
        )
        session.add(audit)
        session.flush()
        return audit.id


@pytest.fixture
def delivered(session_factory, tmp_path):
    """Digits registered through one delivery from vendor acme (the twos and threes)."""
    settings = Settings(data_dir=tmp_path / "data", workers=1)
    root = tmp_path / "digits"
    build_demo_dataset(root, per_class=8, mislabel_rate=0.0)
    files = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("digit_*.png") if "_copy" not in p.name
    )
    first = [(f, f.split("/")[0]) for f in files if f.split("/")[0] in ("two", "three")]
    manifest = write_delivery(tmp_path / "week1.csv", first)
    result = ingest(
        session_factory, "digits", root, settings, delivery=Delivery(manifest, "acme", "week1")
    )
    return settings, root, files, result


def image_id_of(factory, dataset_id: int, path: str) -> int:
    with factory() as session:
        return session.scalar(
            select(Image.id).where(Image.dataset_id == dataset_id, Image.path == path)
        )


def delivered_paths(factory, dataset_id: int) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(Image.path).where(Image.dataset_id == dataset_id).order_by(Image.path)
            )
        )


def test_review_memory_carries_decisions_until_image_or_label_changes(
    session_factory, delivered, tmp_path
):
    settings, root, files, result = delivered
    dataset_id = result.dataset_id
    paths = delivered_paths(session_factory, dataset_id)[:3]
    a, b, c = (image_id_of(session_factory, dataset_id, p) for p in paths)
    subjects = [("mislabel", str(a), [a]), ("mislabel", str(b), [b]), ("mislabel", str(c), [c])]
    subjects.append(("near_duplicate", f"{a}-{b}", [a, b]))

    def audit_with(drafts) -> int:
        audit_id = completed_audit(session_factory, dataset_id)
        with session_factory() as session, session.begin():
            counts = save_findings(
                session,
                dataset_id,
                audit_id,
                [draft(k, s, ids) for k, s, ids in drafts],
                ["mislabel", "near_duplicate"],
            )
        return audit_id, counts

    first, counts = audit_with(subjects)
    assert counts == {"mislabel": 3, "near_duplicate": 1}
    with session_factory() as session, session.begin():
        found = {
            f.subject: f for f in session.scalars(select(Finding).where(Finding.audit_id == first))
        }
        for subject, action in ((f"mislabel:{a}", "dismiss"), (f"mislabel:{b}", "confirm")):
            review_finding(session, found[subject].id, ReviewRequest(action, version=1))
        review_finding(
            session,
            found[f"mislabel:{c}"].id,
            ReviewRequest("relabel", version=1, new_label="nine", reviewer="ann"),
        )

    second, counts = audit_with(subjects)
    with session_factory() as session:
        again = {
            f.subject: f for f in session.scalars(select(Finding).where(Finding.audit_id == second))
        }
        statuses = {s: f.status for s, f in again.items()}
        carried = again[f"mislabel:{c}"].evidence["carried_review"]
    assert statuses == {
        f"mislabel:{a}": "dismissed",
        f"mislabel:{b}": "confirmed",
        f"mislabel:{c}": "relabeled",
        f"near_duplicate:{a}-{b}": "open",
    }
    assert carried["audit_id"] == first and carried["reviewer"] == "ann"
    # Dismissed and relabeled are settled, so not raised; the confirmed error still counts.
    assert counts == {"mislabel": 1, "near_duplicate": 1}

    # A vendor relabels image a: the dismissal was about the old label, so it is asked again.
    changed = write_delivery(tmp_path / "fix.csv", [(paths[0], "seven")], "globex", "fix1")
    ingest(session_factory, "digits", root, settings, delivery=Delivery(changed))
    third, _ = audit_with(subjects)
    with session_factory() as session:
        statuses = {
            f.subject: f.status
            for f in session.scalars(select(Finding).where(Finding.audit_id == third))
        }
    assert statuses[f"mislabel:{a}"] == "open"
    assert statuses[f"mislabel:{b}"] == "confirmed"

    with session_factory() as session:
        diff = audit_diff(session, second)
    assert diff["previous_audit_id"] == first
    assert diff["counts"]["persisting"] == {"mislabel": 1, "near_duplicate": 1}
    assert diff["counts"]["new"] == {} and diff["carried_reviews"] == {
        "confirmed": 1,
        "dismissed": 1,
        "relabeled": 1,
    }
    # Audit 1's dismissed and relabeled findings were settled there already: not "resolved".
    assert diff["counts"]["resolved"] == {}


def test_diff_new_persisting_resolved(session_factory, delivered):
    _, _, files, result = delivered
    dataset_id = result.dataset_id
    ids = [
        image_id_of(session_factory, dataset_id, p)
        for p in delivered_paths(session_factory, dataset_id)[:4]
    ]

    def audit_with(image_ids) -> int:
        audit_id = completed_audit(session_factory, dataset_id)
        with session_factory() as session, session.begin():
            save_findings(
                session,
                dataset_id,
                audit_id,
                [draft("mislabel", str(i), [i]) for i in image_ids],
                ["mislabel"],
            )
        return audit_id

    first = audit_with(ids[:3])
    second = audit_with(ids[1:])
    with session_factory() as session:
        diff = audit_diff(session, second)
        by_id = {f.id: f.subject for f in session.scalars(select(Finding))}
    assert diff["counts"] == {
        "new": {"mislabel": 1},
        "persisting": {"mislabel": 2},
        "resolved": {"mislabel": 1},
    }
    assert [by_id[i] for i in diff["finding_ids"]["new"]] == [f"mislabel:{ids[3]}"]
    assert [by_id[i] for i in diff["finding_ids"]["resolved"]] == [f"mislabel:{ids[0]}"]
    with session_factory() as session:
        assert audit_diff(session, first)["previous_audit_id"] is None


def test_deliveries_embed_only_new_images_and_report_vendors(session_factory, delivered, tmp_path):
    settings, root, files, result = delivered
    first_images = result.images
    assert first_images >= 16 and result.decoded == first_images
    parameters = {"backbone": "resnet18", "weights": "none"}
    first = run_audit(
        session_factory, settings, create_audit(session_factory, result.dataset_id, parameters)
    )
    assert first.status == "completed", first.error
    assert first.summary["embedding"] == {"embedded": first_images, "reused": 0}

    # Week 2: globex labels the fours and fives and relabels one of acme's images.
    second_rows = [(f, f.split("/")[0]) for f in files if f.split("/")[0] in ("four", "five")]
    second_rows.append((delivered_paths(session_factory, result.dataset_id)[0], "three"))
    manifest = write_delivery(tmp_path / "week2.csv", second_rows, "globex", "week2")
    delivered_again = ingest(session_factory, "digits", root, settings, delivery=Delivery(manifest))
    new_images = len(second_rows) - 1
    assert delivered_again.decoded == new_images
    assert delivered_again.images == first_images + new_images
    second = run_audit(
        session_factory, settings, create_audit(session_factory, result.dataset_id, parameters)
    )
    assert second.status == "completed", second.error
    assert second.summary["embedding"] == {"embedded": new_images, "reused": first_images}

    with session_factory() as session:
        report = vendor_report(session, second.id)
        only_globex = vendor_report(session, second.id, "globex")
    assert {row["vendor"]: row["images"] for row in report["items"]} == {
        "acme": first_images,
        "globex": new_images + 1,
    }
    assert {(row["vendor"], row["batch"]) for row in report["batches"]} == {
        ("acme", "week1"),
        ("globex", "week2"),
    }
    assert [row["vendor"] for row in only_globex["items"]] == ["globex"]
    # acme's own images are judged by a head fitted on globex's alone, and the sharpness is
    # fitted on them; globex's (the larger share, too few left to fit on) and the shared image
    # fall back to the audit's.
    assert report["sharpness_fitted"] is True
    assert 0 < report["held_out_share"] < 1
    assert report["confidence_strata"] in (1, 3)
    assert set(report["noise_model_bic"]) == {"1", "3"}
    assert method_line(report).startswith(f"{report['held_out_share']:.0%} of labels judged by")
    # That head learned from globex's images alone, far too few for firm rates.
    assert report["held_out_training_labels"] == new_images
    assert report["caution"] and f"only {new_images:,} labels" in report["caution"]
    assert [(r["vendor_a"], r["vendor_b"], r["images"]) for r in report["agreement"]] == [
        ("acme", "globex", 1)
    ]
    assert [p["audit_id"] for p in report["trend"]["acme"]] == [first.id, second.id]
    assert "globex" not in {v for v, points in report["trend"].items() if len(points) > 1}
    table = list(csv.DictReader(vendor_csv(report).splitlines()))
    assert {row["level"] for row in table} == {"vendor", "batch", "vendor_class"}
    assert vendor_chart(report)[:8] == b"\x89PNG\r\n\x1a\n"


def test_delivery_rejects_missing_manifest_and_records_missing_images(
    session_factory, delivered, tmp_path
):
    settings, root, _, _ = delivered
    from auditor.ingest.sources import SourceError

    with pytest.raises(SourceError, match="not found"):
        ingest(session_factory, "digits", root, settings, delivery=Delivery(tmp_path / "none.csv"))
    manifest = write_delivery(
        tmp_path / "bad.csv", [("six/not_there.png", "six"), ("../../etc/passwd", "six")], "acme"
    )
    result = ingest(session_factory, "digits", root, settings, delivery=Delivery(manifest))
    with session_factory() as session:
        statuses = dict(
            session.execute(
                select(Image.path, Image.status).where(Image.dataset_id == result.dataset_id)
            ).all()
        )
    assert statuses["six/not_there.png"] == "missing"
    assert statuses["../../etc/passwd"] == "refused"
