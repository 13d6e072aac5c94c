"""Labeling-vendor audits on CIFAR-10N: three vendors, each delivering a disjoint third of the
images labeled with one human column (`aggre`, `random1`, `worse`), in two deliveries each.

    python -m bench.vendors [--n 50000] [--review 300]

Runs the product as a team would, in one process on a fresh SQLite file: the dataset is the
CIFAR zip in place; round 1 ingests each vendor's first delivery and audits; a curator (played
by the `clean` column) reviews the top `--review` mislabel findings, confirming true errors and
dismissing the rest; round 2 ingests the second deliveries and audits again. Reported per round:
each vendor's estimated error rate (audit alone) against its true rate, the ranking, confirmed
rates, per-batch figures, how many images were decoded, and what review memory carried over.
Results go to bench/results/vendors-<n>.md.
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from auditor.config import Settings
from auditor.db import migrate
from auditor.db.models import Finding, FindingImage, Image
from auditor.db.session import make_engine, make_session_factory
from auditor.ingest.ingest import ingest
from auditor.ingest.sources import Delivery
from auditor.pipeline.audit import create_audit, run_audit
from auditor.services.diff import audit_diff
from auditor.services.reviews import ReviewRequest, review_finding
from auditor.services.vendors import vendor_report
from bench import cifar
from bench.cifar import VENDORS, plan_deliveries
from bench.report import write_results


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["path", "label", "vendor", "batch"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def true_rates(rows: list[dict], truth: dict, key) -> dict:
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(truth[row["path"]]["wrong"])
    return {group: float(np.mean(values)) for group, values in groups.items()}


def review_top_findings(factory, audit_id: int, truth: dict, count: int) -> dict[str, int]:
    """The curator works down the mislabel findings by score, confirming real errors."""
    decided = {"confirmed": 0, "dismissed": 0}
    with factory() as session, session.begin():
        findings = session.execute(
            select(Finding.id, Image.path)
            .join(FindingImage, FindingImage.finding_id == Finding.id)
            .join(Image, Image.id == FindingImage.image_id)
            .where(Finding.audit_id == audit_id, Finding.kind == "mislabel", Finding.is_issue)
            .order_by(Finding.score.desc(), Finding.id)
            .limit(count)
        ).all()
        for finding_id, path in findings:
            action = "confirm" if truth[path]["wrong"] else "dismiss"
            review_finding(session, finding_id, ReviewRequest(action, version=1, reviewer="bench"))
            decided["confirmed" if action == "confirm" else "dismissed"] += 1
    return decided


def round_table(report: dict, rows: list[dict], truth: dict) -> tuple[list[str], bool, float]:
    actual = true_rates(rows, truth, lambda row: row["vendor"])
    lines = [
        "| vendor (labels) | images | true error rate | estimated (95% interval) | "
        "difference | flagged share | confirmed so far |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for item in report["items"]:
        true = actual[item["vendor"]]
        difference = item["estimated_error_rate"] - true
        worst = max(worst, abs(difference))
        confirmed = item["confirmed_error_rate"]
        lines.append(
            f"| {item['vendor']} (`{VENDORS[item['vendor']]}`) | {item['images']} | {true:.1%} | "
            f"{item['estimated_error_rate']:.1%} ({item['ci_low']:.1%} to {item['ci_high']:.1%}) "
            f"| {difference * 100:+.1f} pp | {item['flagged'] / item['images']:.1%} | "
            f"{'' if confirmed is None else format(confirmed, '.1%')} |"
        )
    estimated_order = [
        i["vendor"] for i in sorted(report["items"], key=lambda i: i["estimated_error_rate"])
    ]
    true_order = sorted(actual, key=actual.get)
    return lines, estimated_order == true_order, worst


def batch_table(report: dict, rows: list[dict], truth: dict) -> list[str]:
    actual = true_rates(rows, truth, lambda row: (row["vendor"], row["batch"]))
    lines = [
        "| vendor | batch | images | true | estimated (95% interval) |",
        "|---|---|---:|---:|---:|",
    ]
    for item in report["batches"]:
        true = actual[(item["vendor"], item["batch"])]
        lines.append(
            f"| {item['vendor']} | {item['batch']} | {item['images']} | {true:.1%} | "
            f"{item['estimated_error_rate']:.1%} ({item['ci_low']:.1%} to {item['ci_high']:.1%}) |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--review", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it")
    args = parser.parse_args()
    cifar.require()
    planned, truth = plan_deliveries(args.n, args.seed)
    lines = [
        f"### Vendor audits on CIFAR-10N (`python -m bench.vendors --n {args.n} "
        f"--review {args.review}`)",
        "",
        f"{args.n} random images, a third per vendor, two deliveries each; {platform.machine()}, "
        "2 cores (shared), no GPU; backbone: CNN trained on the data (patch heads + cross-fitted "
        "CNN). Estimated rates come from the audit alone; `clean` only scores them. Columns: "
        "true rate from `clean`; the estimate with its 95% interval; the share of the vendor's "
        "images with a mislabel finding; errors curators confirmed, over all the vendor's images.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        settings = Settings(database_url=f"sqlite:///{workdir / 'vendors.db'}", data_dir=workdir)
        migrate.upgrade(settings.database_url)
        factory = make_session_factory(make_engine(settings.database_url))
        source = cifar.DATA_DIR / "cifar10-train-jpeg.zip"
        delivered: list[dict] = []
        previous = None
        for round_number, batch in enumerate(("delivery-1", "delivery-2"), start=1):
            started = time.perf_counter()
            decoded = 0
            for vendor in VENDORS:
                rows = [r for r in planned if r["vendor"] == vendor and r["batch"] == batch]
                manifest = write_manifest(workdir / f"{vendor}-{batch}.csv", rows)
                result = ingest(factory, "cifar10n", source, settings, delivery=Delivery(manifest))
                decoded += result.decoded
                delivered += rows
            ingest_seconds = time.perf_counter() - started
            started = time.perf_counter()
            audit = run_audit(
                factory, settings, create_audit(factory, result.dataset_id, {"backbone": "trained"})
            )
            audit_seconds = time.perf_counter() - started
            if audit.status != "completed":
                raise SystemExit(f"audit failed: {audit.error}")
            with factory() as session:
                report = vendor_report(session, audit.id)
                diff = audit_diff(session, audit.id, limit=0)
            table, ranked, worst = round_table(report, delivered, truth)
            lines += [
                "",
                f"#### Round {round_number}: {len(delivered)} images after {batch} "
                f"(audit {audit.id})",
                "",
                f"Ingest {ingest_seconds:.0f} s ({decoded} images decoded), audit "
                f"{audit_seconds:.0f} s; embedding stage: {audit.summary.get('embedding')}.",
                "",
                *table,
                "",
                f"Ranking correct: **{'yes' if ranked else 'no'}**; largest difference "
                f"{worst * 100:.1f} pp (goal: within 3 pp). Sharpness {report['sharpness']}"
                f"{' (fitted by likelihood)' if report['sharpness_fitted'] else ' (fixed)'}; "
                f"noise model with {report.get('confidence_strata') or 1} confidence "
                f"strata (BIC {report.get('noise_model_bic')}); "
                f"{report['held_out_share']:.0%} of the vendor labels judged by heads that never "
                f"saw their vendor, fitted on at least {report['held_out_training_labels']} labels"
                f"{'; caution shown' if report['caution'] else ''}.",
                "",
                *batch_table(report, delivered, truth),
            ]
            if previous is not None:
                lines += [
                    "",
                    f"Against audit {previous}: new {diff['counts']['new']}, persisting "
                    f"{diff['counts']['persisting']}, resolved {diff['counts']['resolved']}; "
                    f"review decisions carried over: {diff['carried_reviews']}.",
                ]
            if round_number == 1 and args.review:
                decided = review_top_findings(factory, audit.id, truth, args.review)
                lines += [
                    "",
                    f"Curator reviews the top {args.review} mislabel findings: "
                    f"{decided['confirmed']} confirmed, {decided['dismissed']} dismissed.",
                ]
            previous = audit.id
    write_results(f"vendors-{args.n}.md", lines)


if __name__ == "__main__":
    main()
