"""Benchmark out-of-sample probability strategies on CIFAR-10N by how well cleanlab finds the
real human label errors with them, per CPU-minute.

Each run appends one JSON line to .bench/predict-results.jsonl, so strategies can be (re)run one at
a time in separate processes; `--report` renders every recorded run into bench/results/predict.md.

    python -m bench.predict --n 10000 --labels worse,aggre --strategies cnn_crossfit,cnn_kfold
    python -m bench.predict --report
    python -m bench.predict --device cuda --n 50000 --strategies cnn_kfold   # on a GPU machine

CPU-minutes are the process's user+system time; on CUDA they count the host side only, so GPU
records also carry wall-minutes and the device name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from cleanlab.filter import find_label_issues
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from auditor.predict import TrainConfig, out_of_sample_probabilities
from auditor.predict.strategies import CNN_KFOLD_REPEATS, patch_head
from bench import cifar

RESULTS_LOG = cifar.CACHE_DIR / "predict-results.jsonl"
REPORT = Path(__file__).resolve().parent / "results" / "predict.md"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mislabel_scores(probabilities: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> dict:
    """How well the probabilities expose `noisy != clean`: cleanlab's default filter (precision,
    recall, F1) and the ranking quality of 1 - p(given label) (AUROC)."""
    is_error = noisy != clean
    flagged = find_label_issues(noisy, probabilities)
    precision, recall, f1, _ = precision_recall_fscore_support(
        is_error, flagged, average="binary", zero_division=0
    )
    given = probabilities[np.arange(len(noisy)), noisy]
    return {
        "accuracy_vs_clean": float((probabilities.argmax(1) == clean).mean()),
        "accuracy_vs_given": float((probabilities.argmax(1) == noisy).mean()),
        "noise_rate": float(is_error.mean()),
        "flagged": int(flagged.sum()),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": float(roc_auc_score(is_error, 1 - given)),
    }


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)} + {os.cpu_count()} cores"
    return f"CPU, {os.cpu_count()} cores"


def head_description(strategy: str, cnn_head: str, rows: int) -> str:
    """The heads that ran: `--head` sets the CNN strategies' head, while the patch heads'
    kind follows the number of labeled images."""
    if strategy == "patch_heads":
        return patch_head(rows)
    if strategy == "patch_cnn":
        return f"{cnn_head}, patch heads {patch_head(rows)}"
    return cnn_head


Run = tuple[np.ndarray, float, float]  # probabilities, wall seconds, CPU seconds


def run(args: argparse.Namespace) -> None:
    images = cifar.load_images()
    columns = cifar.load_labels()
    rows = cifar.subset(args.n, seed=args.subset_seed)
    config = TrainConfig(width=args.width, epochs=args.epochs)
    for column in args.labels.split(","):
        noisy, clean = columns[column][rows], columns["clean"][rows]
        for strategy in args.strategies.split(","):
            runs: list[Run] = []
            for seed in range(args.seed, args.seed + args.repeats):
                wall, cpu = time.perf_counter(), _cpu_seconds()
                result = out_of_sample_probabilities(
                    strategy,
                    images=images[rows],
                    labels=noisy,
                    n_classes=len(cifar.CLASSES),
                    folds=args.folds,
                    seed=seed,
                    head=args.head,
                    train_config=config,
                    device=args.device,
                    cross_fittings=args.cross_fittings,
                )
                runs.append(
                    (result.probabilities, time.perf_counter() - wall, _cpu_seconds() - cpu)
                )
                record_run(args, strategy, "", column, seed, runs[-1:], noisy, clean)
                saved = strategy
                if strategy == "cnn_kfold" and args.cross_fittings > 1:
                    saved = f"cnn_kfold_x{args.cross_fittings}"
                save_probabilities(args.save, saved, column, seed, rows, result.probabilities)
            if len(runs) > 1:
                mean = f", mean of {len(runs)} seeds"
                record_run(args, strategy, mean, column, args.seed, runs, noisy, clean)


def record_run(
    args: argparse.Namespace,
    strategy: str,
    variant: str,
    column: str,
    seed: int,
    runs: list[Run],
    noisy: np.ndarray,
    clean: np.ndarray,
) -> None:
    """One results line; for several runs, of their averaged probabilities and summed time."""
    probabilities = np.mean([p for p, _, _ in runs], axis=0)
    if strategy == "cnn_kfold" and args.cross_fittings > 1:
        variant = f", {args.cross_fittings} cross-fittings{variant}"
    record = {
        "strategy": strategy + variant,
        "labels": column,
        "n": len(noisy),
        "folds": args.folds,
        "epochs": args.epochs,
        "width": args.width,
        "head": head_description(strategy, args.head, len(noisy)),
        "seed": seed,
        "device": device_name(args.device),
        "wall_minutes": sum(w for _, w, _ in runs) / 60,
        "cpu_minutes": sum(c for _, _, c in runs) / 60,
        **mislabel_scores(probabilities, noisy, clean),
        "command": "python -m bench.predict " + shlex.join(sys.argv[1:]),
    }
    print(json.dumps(record), flush=True)
    RESULTS_LOG.parent.mkdir(exist_ok=True)
    with open(RESULTS_LOG, "a") as log:
        log.write(json.dumps(record) + "\n")


def save_probabilities(
    folder: Path | None,
    strategy: str,
    column: str,
    seed: int,
    rows: np.ndarray,
    probabilities: np.ndarray,
) -> None:
    """Keep a run's probabilities (float32, with their image rows) for scoring elsewhere, e.g.
    runs made on a GPU machine scored by `bench.saved_quality` on the development machine."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{strategy}-{column}-{len(rows)}-seed{seed}.npz"
    np.savez_compressed(folder / name, rows=rows, probabilities=probabilities.astype(np.float32))


def report(results: Path, out: Path) -> None:
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    header = (
        "| labels | n | strategy | device | folds | epochs (max) | width | head | acc vs clean | "
        "flagged | precision | recall | F1 | AUROC | CPU-min | wall-min |"
    )
    lines = [
        "# Out-of-sample probabilities on CIFAR-10N",
        "",
        f"Machine: {platform.machine()} CPU, 2 cores shared with other work (no GPU), "
        "torch threads = 2, unless the device column names a GPU machine. CPU-minutes are the "
        "process's user+system time (host side only on a GPU).",
        "Mislabel scores: cleanlab `find_label_issues(labels, probs)` with defaults against "
        "`noisy != clean`; AUROC of 1 - p(given label).",
        "",
        header,
        "|" + " --- |" * (header.count("|") - 1),
    ]
    for r in sorted(records, key=lambda r: (r["labels"] != "worse", r["n"], r["strategy"])):
        device = r.get("device", "CPU, 2 cores")
        lines.append(
            f"| {r['labels']} | {r['n']} | {r['strategy']} | {device} | {r['folds']} | "
            f"{r['epochs']} | "
            f"{r['width']} | {r['head']} | {r['accuracy_vs_clean']:.3f} | {r['flagged']} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['auroc']:.3f} | "
            f"{r['cpu_minutes']:.1f} | {r['wall_minutes']:.1f} |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"    {c}" for c in dict.fromkeys(r["command"] for r in records)]
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images (stratified subset)")
    parser.add_argument("--labels", default="worse,aggre", help="noisy label columns")
    parser.add_argument("--strategies", default="cnn_crossfit,cnn_once_heads,cnn_kfold")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--width", type=int, default=TrainConfig.width)
    parser.add_argument("--head", default="linear", choices=("linear", "mlp"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs with seeds seed, seed+1, ...; with more than one, their mean is scored too",
    )
    parser.add_argument(
        "--cross-fittings",
        type=int,
        default=CNN_KFOLD_REPEATS,
        help="K-fold runs that cnn_kfold averages within one run",
    )
    parser.add_argument("--save", type=Path, help="folder to keep each run's probabilities in")
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--report", action="store_true", help="only render the results table")
    parser.add_argument("--results", type=Path, default=RESULTS_LOG, help="records to render")
    parser.add_argument("--out", type=Path, default=REPORT, help="where --report writes")
    args = parser.parse_args()
    if args.report:
        report(args.results, args.out)
    else:
        cifar.require()
        run(args)


if __name__ == "__main__":
    main()
