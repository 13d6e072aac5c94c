"""A full audit of CIFAR-10N end to end: ingest the zip in place, embed, predict, index, hierarchy,
checks, summary; wall time per stage, peak memory, and what the findings are worth.

    python -m bench.audit [--labels worse] [--n 50000] [--backbone trained] [--keep DIR]

Runs in one process on a fresh SQLite file in a temporary folder, as `auditor run` does; `--keep`
puts the SQLite file and the audit's stored arrays (probabilities, features) in a new folder that
stays, so the figures can be explored afterwards without a rerun. With
`--n` below 50,000 only the first n images carry labels (the rest are ingested but not audited).
Results go to bench/results/audit-<labels>-<n>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from auditor.config import Settings
from auditor.db import migrate
from auditor.db.session import make_engine, make_session_factory
from auditor.pipeline.artifacts import AuditArtifacts
from bench import cifar
from bench.report import flagged_paths, image_paths, write_results


def peak_rss_gib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2


# torch, cleanlab, scikit-learn and the pipeline are imported inside the functions that use them:
# spawn re-imports this script in every decoding worker, as it re-imports the `auditor` console
# script, whose module imports none of them; here at the top they would start each worker seconds
# slower than in a real run.


def machine_line(settings: Settings) -> str:
    import torch

    from auditor.embed.extract import resolve_device

    cores = f"{os.cpu_count()} cores"
    device = resolve_device(settings.device)
    if device.type == "cuda":
        return f"{platform.machine()}, {cores}, {torch.cuda.get_device_name(device)}"
    return f"{platform.machine()}, {cores}, no GPU"


def cleanlab_on_audit_probabilities(
    factory, data_dir: Path, audit_id: int, truth: dict[str, bool], clean: dict[str, str]
) -> str:
    """cleanlab's `find_label_issues` on the probabilities the audit's predict stage stored: the
    default strategy's figures for #3 at this size, and the baseline for the audit's own check."""
    from cleanlab.filter import find_label_issues
    from sklearn.metrics import roc_auc_score

    artifacts = AuditArtifacts(data_dir, audit_id)
    frozen, predicted = artifacts.load_arrays("ingest"), artifacts.load_arrays("predict")
    with factory() as session:
        paths = image_paths(session, frozen["image_ids"])
    classes = [str(name) for name in frozen["class_names"]]
    ok = predicted["ok"].astype(bool)
    labels, probabilities = frozen["labels"][ok], predicted["probabilities"][ok]
    wrong = np.array([truth[p] for p, kept in zip(paths, ok, strict=True) if kept])
    true_class = np.array(
        [classes.index(clean[p]) for p, kept in zip(paths, ok, strict=True) if kept]
    )
    issues = find_label_issues(labels, probabilities)
    hits = int((issues & wrong).sum())
    precision, recall = hits / max(1, int(issues.sum())), hits / max(1, int(wrong.sum()))
    f1 = 2 * precision * recall / max(1e-9, precision + recall)
    auroc = roc_auc_score(wrong, 1.0 - probabilities[np.arange(len(labels)), labels])
    accuracy = float((probabilities.argmax(axis=1) == true_class).mean())
    return (
        f"cleanlab's `find_label_issues` on the audit's probabilities: precision {precision:.3f}, "
        f"recall {recall:.3f}, F1 {f1:.3f}, AUROC of self-confidence {auroc:.3f}; their accuracy "
        f"against `clean` {accuracy:.3f}."
    )


def work_folder(keep: Path | None) -> contextlib.AbstractContextManager[str]:
    """A temporary folder, or `keep` made anew (an old audit's files there would mix in)."""
    if keep is None:
        return tempfile.TemporaryDirectory()
    if keep.exists() and any(keep.iterdir()):
        raise SystemExit(f"{keep} is not empty; --keep needs a new or empty folder")
    keep.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(str(keep))


def main() -> None:
    from auditor.ingest.ingest import ingest
    from auditor.pipeline.audit import create_audit, run_audit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", default="worse")
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--backbone", default="trained")
    parser.add_argument("--keep", type=Path, help="a new folder to keep the audit's files in")
    args = parser.parse_args()
    cifar.require()
    with work_folder(args.keep) as tmp:
        workdir = Path(tmp)
        labels_file = workdir / "labels.csv"
        truth, clean = {}, {}
        with (cifar.DATA_DIR / "cifar10n-labels.csv").open() as src, labels_file.open("w") as dst:
            writer = csv.writer(dst)
            writer.writerow(["path", "label"])
            for row in sorted(csv.DictReader(src), key=lambda r: r["image"])[: args.n]:
                writer.writerow([row["image"], row[args.labels]])
                truth[row["image"]] = row[args.labels] != row["clean"]
                clean[row["image"]] = row["clean"]
        settings = Settings(database_url=f"sqlite:///{workdir / 'audit.db'}", data_dir=workdir)
        migrate.upgrade(settings.database_url)
        factory = make_session_factory(make_engine(settings.database_url))
        started = time.perf_counter()
        ingested = ingest(
            factory, "cifar10n", cifar.DATA_DIR / "cifar10-train-jpeg.zip", settings, labels_file
        )
        ingest_seconds = time.perf_counter() - started
        audit_id = create_audit(factory, ingested.dataset_id, {"backbone": args.backbone})
        audit = run_audit(factory, settings, audit_id)
        total = time.perf_counter() - started
        if audit.status != "completed":
            raise SystemExit(f"audit {audit_id} {audit.status}: {audit.error}")
        with factory() as session:
            flagged = flagged_paths(session, audit_id, "mislabel")
        baseline = cleanlab_on_audit_probabilities(factory, workdir, audit_id, truth, clean)
    wrong = {path for path, is_wrong in truth.items() if is_wrong}
    precision = len(flagged & wrong) / max(1, len(flagged))
    recall = len(flagged & wrong) / max(1, len(wrong))
    f1 = 2 * precision * recall / max(1e-9, precision + recall)
    lines = [
        f"### Full audit (`python -m bench.audit --labels {args.labels} --n {args.n} "
        f"--backbone {args.backbone}`)",
        "",
        f"Machine: {machine_line(settings)}; SQLite; {ingested.images} images "
        f"ingested, {audit.summary['audited_images']} audited.",
        "",
        "| stage | wall seconds |",
        "|---|---:|",
        f"| ingest (decode, hash, register) | {ingest_seconds:.1f} |",
        *[f"| {stage} | {seconds:.1f} |" for stage, seconds in audit.stage_timings.items()],
        f"| **total** | **{total:.1f}** |",
        "",
        f"Peak resident memory: {peak_rss_gib():.2f} GiB (largest of the process and its workers).",
        "",
        f"Findings: {audit.summary['findings']}.",
        f"Mislabel findings against `{args.labels} != clean`: precision {precision:.3f}, "
        f"recall {recall:.3f}, F1 {f1:.3f}; health score {audit.summary['health_score']:.3f}.",
        baseline,
    ]
    write_results(f"audit-{args.labels}-{args.n}.md", lines)


if __name__ == "__main__":
    main()
