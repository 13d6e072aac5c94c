"""Which model should judge a labeling vendor: the vendor error estimates of bench/vendors.py under
different held-out priors, on the same vendors and deliveries, without the database.

    python -m bench.vendor_prior [--n 50000] [--priors patch,cnn] [--device cuda]

Each prior gives every image probabilities from a model that never saw the image's vendor:
- `patch`: linear heads on the label-free patch features (what the audit uses by default);
- `cnn`: one CNN per vendor, trained on the other vendors' images;
- `mix`: the mean of the two (needs both).
The estimate is `vendor_estimates` as in the audit (noise model, sharpness fitted by likelihood).
Round 1 is each vendor's first delivery, round 2 both. Probabilities are cached under --cache
(so the CNN priors can be computed on a GPU machine and scored anywhere). Results go to
bench/results/vendor-prior-<n>.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from auditor.predict.cnn import TrainConfig, predict_probabilities, train_cnn, use_available_cores
from auditor.predict.heads import group_held_out_probabilities, held_out_groups
from auditor.predict.patch_features import patch_features
from auditor.predict.strategies import PATCH_REGULARISATION
from auditor.vendors.estimate import VendorLabels, vendor_estimates
from bench import cifar
from bench.report import write_results


def round_rows(n: int, round_number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(image indices, given labels, clean labels, vendor per row) of the images delivered by the
    end of the round."""
    planned, truth = cifar.plan_deliveries(n, seed=0)
    if round_number == 1:
        planned = [row for row in planned if row["batch"] == "delivery-1"]
    order = {name: i for i, name in enumerate(cifar.image_names())}
    index = {name: i for i, name in enumerate(cifar.CLASSES)}
    images = np.array([order[row["path"]] for row in planned])
    given = np.array([index[row["label"]] for row in planned])
    clean = np.array([index[truth[row["path"]]["clean"]] for row in planned])
    return images, given, clean, [row["vendor"] for row in planned]


def group_held_out_networks(
    images: np.ndarray, labels: np.ndarray, membership: np.ndarray, config: TrainConfig, device
) -> np.ndarray:
    """`group_held_out_probabilities` with a CNN per vendor in place of the linear head: each
    network trains on the other vendors' images only."""
    probabilities = np.zeros((len(labels), 10))
    for held_out, train in held_out_groups(membership, labels):
        net = train_cnn(images[train], labels[train], 10, config=config, device=device)
        probabilities[held_out] = predict_probabilities(net, images[held_out])
    return probabilities


def held_out_prior(
    prior: str, images: np.ndarray, labels: np.ndarray, membership: np.ndarray, args
) -> np.ndarray:
    if prior == "patch":
        encoded = np.sqrt(patch_features(images, device=args.device))
        probabilities, _ = group_held_out_probabilities(
            encoded, labels, 10, membership, regularisation=PATCH_REGULARISATION
        )
    elif prior == "cnn":
        config = TrainConfig(width=args.width, epochs=args.epochs)
        probabilities = group_held_out_networks(images, labels, membership, config, args.device)
    else:
        raise SystemExit(f"unknown prior {prior!r}")
    return probabilities


def cached_prior(prior: str, round_number: int, rows, args) -> tuple[np.ndarray, str]:
    """(probabilities, how long they took and where), from the cache when it holds them."""
    indices, given, _, vendors = rows
    cache = args.cache / f"vendor-prior-{prior}-{args.n}-r{round_number}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return data["probabilities"], str(data["timing"])
    names = sorted(set(vendors))
    membership = np.array([[vendor == name for name in names] for vendor in vendors])
    started = time.perf_counter()
    images = cifar.load_images()[indices]
    probabilities = held_out_prior(prior, images, given, membership, args)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    timing = f"{time.perf_counter() - started:.0f} s, {where}"
    args.cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache, probabilities=probabilities, timing=timing)
    return probabilities, timing


def estimate_lines(prior: str, probabilities, timing: str, rows) -> list[str]:
    _, given, clean, vendors = rows
    labels = VendorLabels(
        rows=np.arange(len(given)),
        classes=given,
        vendors=vendors,
        batches=["-"] * len(given),
        batch_ids=[None] * len(given),
    )
    covered = np.ones(len(given), dtype=bool)
    unflagged = np.zeros(len(given), dtype=bool)
    report = vendor_estimates(
        probabilities, labels, list(cifar.CLASSES), unflagged, (probabilities, covered)
    )
    vendor_of = np.array(vendors)
    cells, worst = [], 0.0
    for item in report["vendors"]:
        mine = vendor_of == item["vendor"]
        true = float(np.mean(given[mine] != clean[mine]))
        difference = item["estimated_error_rate"] - true
        worst = max(worst, abs(difference))
        cells.append(
            f"{true:.1%} / {item['estimated_error_rate']:.1%} ({difference * 100:+.1f} pp)"
        )
    accuracy = float(np.mean(probabilities.argmax(1) == clean))
    return [
        f"| {prior} | {accuracy:.3f} | {report['sharpness']} | {' | '.join(cells)} | "
        f"{worst * 100:.1f} pp | {timing} |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--rounds", default="1,2")
    parser.add_argument("--priors", default="patch,cnn,mix")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=64, help="CNN width (the GPU recipe's)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=cifar.CACHE_DIR)
    parser.add_argument("--out", default=None, help="results file name under bench/results/")
    args = parser.parse_args()
    cifar.require()
    use_available_cores()
    lines = [
        f"### Held-out priors for the vendor estimates (`python -m bench.vendor_prior --n {args.n}"
        f" --priors {args.priors}`)",
        "",
        "Vendors and deliveries as in bench/vendors.py; the time column says how long each prior "
        "took and where (priors are cached, so a table can combine GPU and CPU runs)"
        f"; CNN width {args.width}, at most {args.epochs} epochs. Cells: true / estimated error "
        "rate (difference).",
    ]
    priors = args.priors.split(",")
    vendor_names = sorted(cifar.VENDORS)
    for round_number in (int(r) for r in args.rounds.split(",")):
        rows = round_rows(args.n, round_number)
        lines += [
            "",
            f"#### Round {round_number}: {len(rows[1])} images",
            "",
            "| prior | accuracy vs clean | sharpness | "
            + " | ".join(f"{v} (`{cifar.VENDORS[v]}`)" for v in vendor_names)
            + " | worst | time |",
            "|---|---:|---:|" + "---:|" * len(vendor_names) + "---:|---:|",
        ]
        computed = {}
        for prior in priors:
            if prior == "mix":
                continue
            computed[prior] = cached_prior(prior, round_number, rows, args)
            lines += estimate_lines(prior, *computed[prior], rows)
            print("\n".join(lines[-1:]), flush=True)
        if "mix" in priors and {"patch", "cnn"} <= set(computed):
            mixed = (computed["patch"][0] + computed["cnn"][0]) / 2
            lines += estimate_lines("mix", mixed, "-", rows)
            print(lines[-1], flush=True)
    write_results(args.out or f"vendor-prior-{args.n}.md", lines)


if __name__ == "__main__":
    main()
