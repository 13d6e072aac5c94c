"""K-fold classifier heads on frozen features: each row's probabilities come from a head that never
saw that row's label.

Label-error checks (cleanlab's confident learning) compare a row's given label with the model's
belief about it; a model fitted on that very label would simply echo it back, so every head here
predicts only the fold it was not trained on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold

HeadKind = Literal["linear", "mlp"]


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id per row, stratified by label.

    Classes with fewer members than `folds` are allowed (a warning, not an error): their rows are
    spread over as many folds as they have members, so some training folds lack the class and the
    held-out row gets probability 0 for its own label - the honest answer when there is no other
    example to learn it from. Only when every class is that small does stratification become
    impossible; then the folds are plain shuffled ones.
    """
    labels = np.asarray(labels)
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if len(labels) < folds:
        raise ValueError(f"{len(labels)} rows cannot be split into {folds} folds")
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < folds:
        small = np.flatnonzero((counts > 0) & (counts < folds)).tolist()
        warnings.warn(
            f"classes {small} have fewer than {folds} members; held-out rows of a class absent "
            "from the training folds get probability 0 for it",
            stacklevel=2,
        )
    splitter: KFold | StratifiedKFold
    if np.all(present < folds):
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            fold_of[held_out] = fold
    return fold_of


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    # A column constant in the training folds carries nothing the head could learn; leave it as is
    # rather than blow up whatever value a held-out row has there.
    std = np.where(std > 1e-12, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _fit_predict_linear(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, regularisation: float, seed: int
) -> np.ndarray:
    head = LogisticRegression(C=regularisation, max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        # A head that stops a little short of the optimum still ranks labels fine; the noisy
        # labels this runs on make the exact optimum no more correct.
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        head.fit(train_x, train_y)
    return head.predict_proba(test_x)


def _fit_predict_mlp(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    seed: int,
    hidden: int = 512,
    epochs: int = 20,
    batch: int = 256,
) -> np.ndarray:
    """One hidden layer, regularised for noisy labels: dropout on the input and the hidden layer,
    strong weight decay, a one-cycle learning rate and few epochs, so the head learns the classes
    before it can learn individual wrong labels. On patch features of 10,000 CIFAR-10N images it
    beat the linear head on every label set at less CPU time (bench/results/predict.md)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Sequential(
        torch.nn.Dropout(0.2),
        torch.nn.Linear(train_x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(hidden, n_classes),
    )
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=5e-2)
    steps_per_epoch = -(-len(train_x) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=1e-3, total_steps=epochs * steps_per_epoch
    )
    x = torch.from_numpy(train_x.astype(np.float32))
    y = torch.from_numpy(train_y)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(head(x[index]), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    head.eval()
    with torch.inference_mode():
        return torch.softmax(head(torch.from_numpy(test_x.astype(np.float32))), 1).numpy()


def kfold_head_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    folds: int = 4,
    seed: int = 0,
    head: HeadKind = "linear",
    regularisation: float = 0.1,
    repeats: int = 1,
    views: Sequence[np.ndarray] = (),
    on_head: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Out-of-sample probabilities (n, n_classes): one head per fold, each predicting only the
    rows it was not fitted on. `on_head` gets the share of the heads fitted after each one.

    `regularisation` is the inverse L2 strength of the linear head; the default is strong because
    noisy labels reward a head that cannot bend towards individual rows. `repeats` > 1 averages
    that many cross-fittings, each with its own fold split and initialisation (seeds `seed`,
    `seed + 1`, ...): every one is out-of-sample, so their mean is too, and it carries less of
    the luck of one split. `views` are other encodings of the same rows (augmented copies, shaped
    like `features`): a head trains on the views of its training rows too, and a held-out row's
    probabilities are the mean over its features and its views. A view stays in its row's fold,
    so it never carries a held-out row's label into training.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError("features must be (n, d) with one label per row")
    encodings = [features] + [np.asarray(view, dtype=np.float64) for view in views]
    if any(view.shape != features.shape for view in encodings):
        raise ValueError("every view must have the shape of the features")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes})")
    probabilities = np.zeros((len(labels), n_classes))
    for repeat_seed in range(seed, seed + repeats):
        fold_of = fold_assignment(labels, folds, repeat_seed)
        for fold in range(folds):
            held_out = fold_of == fold
            probabilities[held_out] += _held_out_probabilities(
                encodings,
                labels,
                ~held_out,
                held_out,
                n_classes,
                head,
                regularisation,
                repeat_seed + fold,
            )
            if on_head:
                on_head(((repeat_seed - seed) * folds + fold + 1) / (repeats * folds))
    return probabilities / repeats


def _held_out_probabilities(
    encodings: Sequence[np.ndarray],
    labels: np.ndarray,
    train: np.ndarray,
    held_out: np.ndarray,
    n_classes: int,
    head: HeadKind,
    regularisation: float,
    seed: int,
) -> np.ndarray:
    """Probabilities of the `held_out` rows from a head fitted on the `train` rows, in every
    encoding of them (the features, then any augmented views), averaged over the encodings."""
    train_x, test_x = _standardise(
        np.concatenate([encoding[train] for encoding in encodings]),
        np.concatenate([encoding[held_out] for encoding in encodings]),
    )
    train_y = np.tile(labels[train], len(encodings))
    seen = np.unique(train_y)
    rows = int(held_out.sum())
    probabilities = np.zeros((rows, n_classes))
    if len(seen) == 1:
        probabilities[:, seen] = 1.0
        return probabilities
    # Heads learn only the classes in their training rows; remap so they need no empty class.
    local_y = np.searchsorted(seen, train_y)
    if head == "linear":
        local = _fit_predict_linear(train_x, local_y, test_x, regularisation, seed)
    elif head == "mlp":
        local = _fit_predict_mlp(train_x, local_y, test_x, len(seen), seed)
    else:
        raise ValueError(f"unknown head {head!r}")
    probabilities[:, seen] = local.reshape(len(encodings), rows, len(seen)).mean(axis=0)
    return probabilities


def held_out_groups(
    membership: np.ndarray, labels: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(held-out rows, training rows) per pattern of group membership: the rows of one pattern
    are predicted by a model fitted on the rows that share no group with them. Rows of no group,
    and patterns whose complement is smaller than the pattern (too little to fit a model that is
    as good as the others), get no entry."""
    membership = np.asarray(membership, dtype=bool)
    patterns, pattern_of = np.unique(membership, axis=0, return_inverse=True)
    splits = []
    for index, pattern in enumerate(patterns):
        if not pattern.any():
            continue
        held_out = pattern_of.ravel() == index
        train = ~membership[:, pattern].any(axis=1)
        if train.sum() < held_out.sum() or len(np.unique(labels[train])) < 2:
            continue
        splits.append((held_out, train))
    return splits


def group_held_out_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    membership: np.ndarray,
    *,
    seed: int = 0,
    regularisation: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, n_classes), covered (n,) bool): each row predicted by a linear head that
    saw no row of any group the row belongs to. `membership` is (n, groups) bool, e.g. which
    labeling vendors labeled each image.

    K-fold heads are out-of-sample per row, yet still learn each vendor's habits from the
    vendor's other rows, so the model agrees with a vendor's systematic errors and a noisy
    vendor looks better than it is. A head that never saw the vendor cannot. Rows that
    `held_out_groups` leaves out are left uncovered.
    """
    features = np.asarray(features, dtype=np.float64)
    probabilities = np.zeros((len(labels), n_classes))
    covered = np.zeros(len(labels), dtype=bool)
    for held_out, train in held_out_groups(membership, labels):
        probabilities[held_out] = _held_out_probabilities(
            [features], labels, train, held_out, n_classes, "linear", regularisation, seed
        )
        covered[held_out] = True
    return probabilities, covered
