"""Strategies for out-of-sample class probabilities, the input of every label-error check.

Leakage (can an image's own given label influence its probability?):

- `heads`: no. K-fold heads on features the caller supplies; a row is predicted only by heads
  fitted on other folds. (The features themselves must be label-free, e.g. a pretrained backbone.)
- `cnn_kfold`: no. K networks, each trained on K-1 folds, each predicting only its held-out fold;
  two such cross-fittings with different fold splits, averaged. Costs 2K trainings.
- `cnn_crossfit`: no. Two networks, each trained on one half; the other half is predicted by the
  average of that network's softmax and K-fold heads fitted (within the half) on its features.
  Costs about one training on all the data.
- `patch_heads`: no. K-fold heads (linear, or one hidden layer from 10,000 images) on label-free,
  mirror-invariant k-means patch features (`patch_features.py`), averaged over two fold splits;
  from 10,000 to 20,000 images the heads also train on shifted copies, kept in their image's
  fold; nothing label-dependent is fitted outside the folds. No CNN is trained,
  so no layer features are returned.
- `patch_cnn`: barely. A mixture of `patch_heads` and `cnn_crossfit` whose one weight is fitted
  to the given labels (stacking); the audit pipeline's default when it trains its own network,
  since it also yields the CNN's layer features.
- `cnn_once_heads`: yes, weakly. One network trained on all rows for few epochs (early stopping)
  gives features; K-fold heads on them. The network saw each row's label, so features may encode
  it; short training limits memorisation but does not remove it.

The default is `patch_heads`: on 10,000 CIFAR-10N images with 40% human noise it gave the best
mislabel F1 per CPU-minute of the strategies measured, and it cannot leak (bench/results/predict.md).

Given `holdout_groups` (which rows each labeling vendor labeled), every strategy also returns
probabilities from heads that never saw any row of the row's vendors, for the vendor error
estimates (see `group_held_out_probabilities`). Those heads need label-free features: the caller's
for `heads`, otherwise the patch features (computed for this alone by the `cnn_*` strategies, since
a network trained on the labels would carry the vendors' habits into its features).

Where a CNN is trained the result also carries per-layer features. With several networks they come
from the first one for every image, so all rows share one space for search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from auditor.predict.cnn import (
    TrainConfig,
    TrainedCNN,
    layer_features,
    predict_probabilities,
    train_cnn,
    use_available_cores,
)
from auditor.predict.heads import (
    HeadKind,
    fold_assignment,
    group_held_out_probabilities,
    kfold_head_probabilities,
)
from auditor.predict.patch_features import patch_feature_views, patch_features

Strategy = Literal[
    "heads", "patch_heads", "patch_cnn", "cnn_kfold", "cnn_crossfit", "cnn_once_heads"
]
STRATEGIES: tuple[str, ...] = (
    "heads",
    "patch_heads",
    "patch_cnn",
    "cnn_kfold",
    "cnn_crossfit",
    "cnn_once_heads",
)
DEFAULT_STRATEGY: Strategy = "patch_heads"
LEAKS_OWN_LABEL = {
    "heads": False,
    "patch_heads": False,
    "patch_cnn": False,  # one stacking weight over all rows, not per row
    "cnn_kfold": False,
    "cnn_crossfit": False,
    "cnn_once_heads": True,
}


Progress = Callable[[float], None]


def _quiet(fraction: float) -> None:
    return None


def _share(report: Progress, start: float, width: float) -> Progress:
    """The reporter of one part of a strategy's work, which spans [start, start + width]."""
    return lambda fraction: report(start + width * fraction)


@dataclass
class OutOfSample:
    """Probabilities (n, n_classes), rows summing to 1, plus per-layer features of the trained
    network (empty for `heads`), keyed by tap name from input side to output side."""

    probabilities: np.ndarray
    layer_features: dict[str, np.ndarray] = field(default_factory=dict)
    strategy: str = ""
    group_probabilities: np.ndarray | None = None
    group_covered: np.ndarray | None = None


def _normalised(probabilities: np.ndarray) -> np.ndarray:
    totals = probabilities.sum(axis=1, keepdims=True)
    return probabilities / np.where(totals > 0, totals, 1.0)


def _require_images(images: np.ndarray | None, labels: np.ndarray) -> np.ndarray:
    if images is None:
        raise ValueError("this strategy trains a CNN and needs images (uint8 n, h, w, 3)")
    if len(images) != len(labels):
        raise ValueError("one label per image")
    return images


def _network_blind_to(
    held_out, images, labels, n_classes, config, seed, device, report: Progress
) -> TrainedCNN:
    """A network trained on every row except `held_out`, so it may predict those rows."""
    return train_cnn(
        images[~held_out],
        labels[~held_out],
        n_classes,
        config=config,
        seed=seed,
        device=device,
        on_epoch=report,
    )


# Two cross-fittings (fold splits and network seeds differ), averaged: one K-fold run is a draw
# whose quality moves with the seed. On 50,000 CIFAR-10N images on an H200 (width 64, 15 epochs)
# two seeds gave the mislabel check F1 0.785 and 0.764 on `worse`, 0.597 and 0.585 on `aggre`;
# their mean gave 0.784 and 0.600, the better seed's level, for twice the training
# (bench/results/saved-quality-h200.md).
CNN_KFOLD_REPEATS = 2


def _cnn_kfold(
    images, labels, n_classes, folds, seed, config, repeats, device, report
) -> OutOfSample:
    probabilities = np.zeros((len(labels), n_classes))
    features: dict[str, np.ndarray] = {}
    trainings = folds * repeats
    for repeat in range(repeats):
        fold_of = fold_assignment(labels, folds, seed + repeat)
        for fold in range(folds):
            held_out = fold_of == fold
            done = repeat * folds + fold
            net = _network_blind_to(
                held_out,
                images,
                labels,
                n_classes,
                config,
                seed + repeat + fold,
                device,
                _share(report, done / trainings, 1 / trainings),
            )
            probabilities[held_out] += predict_probabilities(net, images[held_out])
            if done == 0:
                features = layer_features(net, images)
    return OutOfSample(probabilities / repeats, features)


def _cnn_crossfit(
    images, labels, n_classes, folds, seed, config, head, device, report
) -> OutOfSample:
    half_of = fold_assignment(labels, 2, seed)
    probabilities = np.zeros((len(labels), n_classes))
    features: dict[str, np.ndarray] = {}
    for half in (0, 1):
        predicted = half_of == half
        net = _network_blind_to(
            predicted,
            images,
            labels,
            n_classes,
            config,
            seed + half,
            device,
            _share(report, half / 2, 1 / 2),
        )
        taps = layer_features(net, images if half == 0 else images[predicted])
        if half == 0:
            features = taps
            taps = {name: values[predicted] for name, values in taps.items()}
        head_probabilities = kfold_head_probabilities(
            taps["pool"], labels[predicted], n_classes, folds=folds, seed=seed, head=head
        )
        network_probabilities = predict_probabilities(net, images[predicted])
        probabilities[predicted] = (head_probabilities + network_probabilities) / 2
    return OutOfSample(probabilities, features)


PATCH_REGULARISATION = 0.01  # strong L2 suits the noisy labels
PATCH_MLP_FROM = 10_000
# Two cross-fittings of the patch heads, averaged: on both 10,000-image CIFAR-10N subsets the
# mean of two fold splits raised accuracy against the clean labels and the mislabel F1 on `worse`
# and `aggre` (about +0.005 each) for one more fit of the heads, a quarter more CPU time at
# 10,000 images; a third repeat added nothing measurable (bench/results/predict.md).
PATCH_HEAD_REPEATS = 2
# Copies of every image shifted two pixels down-right and up-left train the hidden-layer heads
# too, and a held-out image is predicted as the mean over itself and its copies. On two
# 10,000-image CIFAR-10N subsets this raised accuracy against the clean labels and the mislabel
# F1 on `worse` and `aggre`, for about twice the heads' CPU time (bench/results/predict.md).
# Measured at 10,000 images only, so not used below (linear heads) nor above 20,000 images, where
# the copies' encoding and the heads' threefold rows would add many CPU-minutes for an unknown gain.
PATCH_SHIFTS = ((2, 2), (-2, -2))
PATCH_SHIFTS_ROWS = (PATCH_MLP_FROM, 20_000)


def patch_shifts(rows: int) -> tuple[tuple[int, int], ...]:
    low, high = PATCH_SHIFTS_ROWS
    return PATCH_SHIFTS if low <= rows <= high else ()


def patch_head(rows: int) -> HeadKind:
    """The one-hidden-layer head from 10,000 labeled images, the linear one below: on patch
    features of 10,000 CIFAR-10N images the MLP raised held-out accuracy and cleanlab's F1 on all
    three label sets, while at 1,000 and 2,500 images it was no better (bench/results/predict.md)."""
    return "mlp" if rows >= PATCH_MLP_FROM else "linear"


def _patch_heads(images, labels, n_classes, folds, seed, membership, device, report) -> OutOfSample:
    # Square roots tame the heavy-tailed pooled activations.
    encoded, *shifted_views = (
        np.sqrt(view)
        for view in patch_feature_views(images, patch_shifts(len(labels)), seed=seed, device=device)
    )
    report(0.5)
    result = OutOfSample(
        kfold_head_probabilities(
            encoded,
            labels,
            n_classes,
            folds=folds,
            seed=seed,
            head=patch_head(len(labels)),
            regularisation=PATCH_REGULARISATION,
            repeats=PATCH_HEAD_REPEATS,
            views=shifted_views,
            on_head=_share(report, 0.5, 0.5),
        )
    )
    if membership is not None:
        result.group_probabilities, result.group_covered = group_held_out_probabilities(
            encoded, labels, n_classes, membership, seed=seed, regularisation=PATCH_REGULARISATION
        )
    return result


def stacking_weight(first: np.ndarray, second: np.ndarray, labels: np.ndarray) -> float:
    """The weight of `first` in a mixture of two out-of-sample predictions that gives the given
    labels the highest likelihood (stacking). One number fitted on all rows barely leaks, and it
    follows whichever model is better on this dataset instead of a fixed half and half."""
    rows = np.arange(len(labels))
    given_first, given_second = first[rows, labels], second[rows, labels]
    weights = np.linspace(0.0, 1.0, 21)
    likelihood = [np.log(w * given_first + (1 - w) * given_second + 1e-12).mean() for w in weights]
    return float(weights[int(np.argmax(likelihood))])


def _patch_cnn(
    images, labels, n_classes, folds, seed, config, head, membership, device, report
) -> OutOfSample:
    """Both label-free-or-cross-fitted models, mixed by stacking: their errors differ (pixel
    statistics versus learned shapes), so the mixture ranks label errors better than either
    alone, and the CNN's layers serve search and the per-layer hierarchy analysis."""
    patch = _patch_heads(
        images, labels, n_classes, folds, seed, membership, device, _share(report, 0, 0.5)
    )
    cnn = _cnn_crossfit(
        images, labels, n_classes, folds, seed, config, head, device, _share(report, 0.5, 0.5)
    )
    weight = stacking_weight(patch.probabilities, cnn.probabilities, labels)
    mixed = weight * patch.probabilities + (1 - weight) * cnn.probabilities
    return OutOfSample(
        mixed,
        cnn.layer_features,
        group_probabilities=patch.group_probabilities,
        group_covered=patch.group_covered,
    )


def _cnn_once_heads(
    images, labels, n_classes, folds, seed, config, head, device, report
) -> OutOfSample:
    net = train_cnn(
        images,
        labels,
        n_classes,
        config=config,
        seed=seed,
        device=device,
        on_epoch=_share(report, 0, 0.9),
    )
    features = layer_features(net, images)
    probabilities = kfold_head_probabilities(
        features["pool"], labels, n_classes, folds=folds, seed=seed, head=head
    )
    return OutOfSample(probabilities, features)


def out_of_sample_probabilities(
    strategy: Strategy = DEFAULT_STRATEGY,
    *,
    labels: np.ndarray,
    n_classes: int,
    images: np.ndarray | None = None,
    features: np.ndarray | None = None,
    folds: int = 4,
    seed: int = 0,
    head: HeadKind = "linear",
    train_config: TrainConfig | None = None,
    epochs: int | None = None,
    holdout_groups: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    cross_fittings: int = CNN_KFOLD_REPEATS,
) -> OutOfSample:
    """Class probabilities for every row from models that did not train on that row (except for
    `cnn_once_heads`, see the module notes). Deterministic for a seed on a given machine.

    `images` are uint8 (n, h, w, 3) for the CNN strategies; `features` (n, d) for `heads`.
    `epochs` overrides `train_config.epochs` (an early-stopping ceiling). `holdout_groups` is
    (n, groups) bool membership, e.g. of labeling vendors. `device` runs the CNN training and the
    patch encoding (the linear heads stay on the CPU); results on CUDA differ from the CPU's in
    the last digits of float arithmetic, not in the random draws. `progress` gets the share of
    the work done, after each epoch of a network and each part of the patch heads; what it raises
    stops the work there. `cross_fittings` is how many K-fold runs `cnn_kfold` averages.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError("labels must be a non-empty 1-d array")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes})")
    use_available_cores()
    report = progress or _quiet
    config = train_config or TrainConfig()
    if epochs is not None:
        config = replace(config, epochs=epochs)
    if strategy == "heads":
        if features is None or len(features) != len(labels):
            raise ValueError("strategy 'heads' needs features (n, d), one row per label")
        result = OutOfSample(
            kfold_head_probabilities(features, labels, n_classes, folds=folds, seed=seed, head=head)
        )
        if holdout_groups is not None:
            result.group_probabilities, result.group_covered = group_held_out_probabilities(
                features, labels, n_classes, holdout_groups, seed=seed
            )
    elif strategy in STRATEGIES:
        common = (_require_images(images, labels), labels, n_classes, folds, seed)
        if strategy == "patch_heads":
            result = _patch_heads(*common, holdout_groups, device, report)
        elif strategy == "patch_cnn":
            result = _patch_cnn(*common, config, head, holdout_groups, device, report)
        elif strategy == "cnn_kfold":
            if cross_fittings < 1:
                raise ValueError("cross_fittings must be at least 1")
            result = _cnn_kfold(*common, config, cross_fittings, device, report)
        elif strategy == "cnn_crossfit":
            result = _cnn_crossfit(*common, config, head, device, report)
        else:
            result = _cnn_once_heads(*common, config, head, device, report)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if holdout_groups is not None and result.group_probabilities is None:
        encoded = np.sqrt(patch_features(images, seed=seed, device=device))
        result.group_probabilities, result.group_covered = group_held_out_probabilities(
            encoded,
            labels,
            n_classes,
            holdout_groups,
            seed=seed,
            regularisation=PATCH_REGULARISATION,
        )
    result.probabilities = _normalised(result.probabilities)
    result.strategy = strategy
    report(1.0)
    return result
