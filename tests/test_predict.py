"""Out-of-sample probabilities: shape, determinism, and above all that no row's own label reaches
its prediction (the property every label-error check depends on)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from auditor.predict import (
    LAYER_TAPS,
    TrainConfig,
    kfold_head_probabilities,
    out_of_sample_probabilities,
)
from auditor.predict.cnn import _augment
from auditor.predict.heads import fold_assignment
from auditor.predict.patch_features import (
    PatchKMeans,
    _normalise_patches,
    patch_feature_views,
    patch_features,
    shifted,
)
from auditor.predict.strategies import (
    PATCH_MLP_FROM,
    PATCH_SHIFTS_ROWS,
    patch_head,
    patch_shifts,
    stacking_weight,
)


def digit_images(n: int, side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits as uint8 RGB images of `side` pixels, with their labels."""
    digits = load_digits()
    pixels = (digits.images[:n] * (255 / 16)).astype(np.uint8)
    scale = side // 8
    big = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.repeat(big[..., None], 3, axis=3), digits.target[:n].astype(np.int64)


def digit_features() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return digits.data.astype(np.float64), digits.target.astype(np.int64)


def test_heads_rows_are_probabilities_and_deterministic():
    features, labels = digit_features()
    first = out_of_sample_probabilities("heads", features=features, labels=labels, n_classes=10)
    again = out_of_sample_probabilities("heads", features=features, labels=labels, n_classes=10)
    assert first.probabilities.shape == (len(labels), 10)
    np.testing.assert_allclose(first.probabilities.sum(1), 1.0, atol=1e-9)
    assert (first.probabilities >= 0).all()
    np.testing.assert_array_equal(first.probabilities, again.probabilities)
    assert first.layer_features == {}
    assert (first.probabilities.argmax(1) == labels).mean() > 0.9


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_own_label_does_not_leak_into_its_prediction(head):
    """Each row carries a unique fingerprint (a one-hot of its index) and a random label. A head that
    saw the row memorises fingerprint -> label (~100%); a truly out-of-sample one never saw that
    fingerprint and can only guess (~10%)."""
    from sklearn.linear_model import LogisticRegression

    n, n_classes = 240, 10
    random_labels = np.random.default_rng(0).integers(0, n_classes, n)
    fingerprints = np.eye(n)
    in_sample = LogisticRegression(C=100, max_iter=500).fit(fingerprints, random_labels)
    assert (in_sample.predict(fingerprints) == random_labels).mean() > 0.95
    probabilities = kfold_head_probabilities(fingerprints, random_labels, n_classes, head=head)
    assert (probabilities.argmax(1) == random_labels).mean() < 0.2


def test_repeated_cross_fitting_averages_out_of_sample_splits():
    """Two repeats are the mean of the cross-fittings with seeds 0 and 1, and the mean still
    never saw a row's own label (the fingerprint test above, with repeats)."""
    features, labels = digit_features()
    single = [kfold_head_probabilities(features, labels, 10, seed=seed) for seed in (0, 1)]
    assert np.abs(single[0] - single[1]).max() > 1e-3  # the splits really differ
    repeated = kfold_head_probabilities(features, labels, 10, seed=0, repeats=2)
    np.testing.assert_allclose(repeated, (single[0] + single[1]) / 2, atol=1e-9)

    n = 240
    random_labels = np.random.default_rng(0).integers(0, 10, n)
    probabilities = kfold_head_probabilities(np.eye(n), random_labels, 10, repeats=2)
    assert (probabilities.argmax(1) == random_labels).mean() < 0.2
    with pytest.raises(ValueError, match="repeats"):
        kfold_head_probabilities(features, labels, 10, repeats=0)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_augmented_views_stay_in_their_rows_fold(head):
    """A view identical to its row is the strongest leak a view could carry: were a held-out row's
    view trained on, the head would have memorised that fingerprint's label (the test above)."""
    n = 240
    random_labels = np.random.default_rng(0).integers(0, 10, n)
    fingerprints = np.eye(n)
    probabilities = kfold_head_probabilities(
        fingerprints, random_labels, 10, head=head, views=[fingerprints.copy()]
    )
    assert (probabilities.argmax(1) == random_labels).mean() < 0.2


def test_views_are_trained_on_and_averaged_over():
    """A view that moves every row's features changes the result; with views the output is
    still a probability per row; a view of another shape is refused."""
    features, labels = digit_features()
    rng = np.random.default_rng(0)
    view = features + rng.normal(0, 4.0, features.shape)
    plain = kfold_head_probabilities(features, labels, 10)
    viewed = kfold_head_probabilities(features, labels, 10, views=[view])
    np.testing.assert_allclose(viewed.sum(1), 1.0, atol=1e-9)
    assert np.abs(viewed - plain).max() > 1e-2
    assert (viewed.argmax(1) == labels).mean() > 0.9
    with pytest.raises(ValueError, match="shape"):
        kfold_head_probabilities(features, labels, 10, views=[features[:, :10]])


def test_shifted_copies_move_the_pixels_and_share_one_dictionary():
    images, _ = digit_images(40)
    np.testing.assert_array_equal(shifted(images, 0, 0), images)
    moved = shifted(images, 2, -3)
    np.testing.assert_array_equal(moved[:, :-2, 3:], images[:, 2:, :-3])
    with pytest.raises(ValueError, match="padding"):
        shifted(images, 5, 0)
    views = patch_feature_views(images, [(2, -3)], centroids=16)
    np.testing.assert_allclose(views[0], patch_features(images, centroids=16), rtol=1e-6)
    assert views[1].shape == views[0].shape
    assert not np.allclose(views[0], views[1], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_flipped_labels_get_low_given_label_probability(head):
    features, labels = digit_features()
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(labels), 100, replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    probabilities = kfold_head_probabilities(features, noisy, 10, head=head)
    given = probabilities[np.arange(len(noisy)), noisy]
    kept = np.setdiff1d(np.arange(len(noisy)), flipped)
    assert np.median(given[flipped]) < 0.1
    assert np.median(given[kept]) > 0.5
    lowest = np.argsort(given)[: len(flipped)]
    assert len(np.intersect1d(lowest, flipped)) > 80


def test_classes_smaller_than_folds_warn_and_get_zero_own_probability():
    features, labels = digit_features()
    labels = labels.copy()
    singleton = np.flatnonzero(labels == 9)[0]
    labels[labels == 9] = 8
    labels[singleton] = 9  # class 9 now has exactly one member
    with pytest.warns(UserWarning, match="fewer than 4 members"):
        probabilities = kfold_head_probabilities(features, labels, 11, folds=4)
    assert probabilities.shape == (len(labels), 11)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-9)
    assert probabilities[singleton, 9] == 0.0  # no other example to learn the class from
    assert (probabilities[:, 10] == 0).all()  # a class nobody carries


def test_patch_heads_get_a_hidden_layer_only_with_enough_images():
    assert patch_head(PATCH_MLP_FROM - 1) == "linear"
    assert patch_head(PATCH_MLP_FROM) == "mlp"


def test_patch_heads_train_on_shifted_copies_only_where_measured():
    low, high = PATCH_SHIFTS_ROWS
    assert low == PATCH_MLP_FROM
    assert patch_shifts(low - 1) == () and patch_shifts(high + 1) == ()
    assert len(patch_shifts(low)) == 2 and patch_shifts(high) == patch_shifts(low)


def test_every_class_tiny_falls_back_to_plain_folds():
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fold_of = fold_assignment(labels, 4, seed=0)
    assert sorted(np.bincount(fold_of)) == [2, 2, 2, 2]


def test_bad_inputs_are_refused_clearly():
    features, labels = digit_features()
    with pytest.raises(ValueError, match="folds"):
        kfold_head_probabilities(features, labels, 10, folds=1)
    with pytest.raises(ValueError, match="labels must lie"):
        kfold_head_probabilities(features, labels, 5)
    with pytest.raises(ValueError, match="needs images"):
        out_of_sample_probabilities("cnn_kfold", labels=labels, n_classes=10)
    with pytest.raises(ValueError, match="unknown strategy"):
        out_of_sample_probabilities("magic", features=features, labels=labels, n_classes=10)


TINY = TrainConfig(epochs=2, width=16, batch_size=64)


@pytest.mark.parametrize("strategy", ["cnn_crossfit", "cnn_once_heads", "cnn_kfold"])
def test_cnn_strategies_train_and_return_probabilities_and_layer_features(strategy):
    images, labels = digit_images(400)
    result = out_of_sample_probabilities(
        strategy, images=images, labels=labels, n_classes=10, folds=3, train_config=TINY
    )
    assert result.strategy == strategy
    assert result.probabilities.shape == (400, 10)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, atol=1e-6)
    assert list(result.layer_features) == list(LAYER_TAPS)
    for values in result.layer_features.values():
        assert values.shape[0] == 400 and values.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, atol=1e-4)


def test_cnn_kfold_averages_two_cross_fittings():
    """One K-fold run's quality moves with its seed, so the strategy averages two runs with
    different fold splits: exactly the mean of the single runs at seeds s and s + 1."""
    images, labels = digit_images(240)
    predict = functools.partial(
        out_of_sample_probabilities,
        "cnn_kfold",
        images=images,
        labels=labels,
        n_classes=10,
        folds=3,
        train_config=TINY,
    )
    averaged = predict(seed=5).probabilities
    single = [predict(seed=seed, cross_fittings=1).probabilities for seed in (5, 6)]
    assert not np.allclose(single[0], single[1], atol=1e-3)
    np.testing.assert_allclose(averaged, (single[0] + single[1]) / 2, atol=1e-6)


@pytest.mark.parametrize(
    ("strategy", "parts"), [("cnn_kfold", 3), ("patch_cnn", 3), ("patch_heads", 6)]
)
def test_progress_moves_through_the_work_and_can_stop_it(strategy, parts):
    """A long predict stage reports as it goes (epochs of each network, the patch heads' parts),
    and what the reporter raises, as an audit's cancel does, stops the work at once."""
    images, labels = digit_images(300)
    predict = functools.partial(
        out_of_sample_probabilities,
        strategy,
        images=images,
        labels=labels,
        n_classes=10,
        folds=3,
        train_config=TINY,
    )
    shares: list[float] = []
    predict(progress=shares.append)
    assert shares == sorted(shares) and shares[-1] == 1.0
    assert len(set(shares)) >= parts + 1 and 0 < shares[0] <= 0.5

    class Cancelled(Exception):
        pass

    def cancel(fraction: float) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        predict(progress=cancel)


def test_patch_heads_need_no_training_and_are_deterministic():
    images, labels = digit_images(200)
    runs = [
        out_of_sample_probabilities("patch_heads", images=images, labels=labels, n_classes=10)
        for _ in range(2)
    ]
    assert runs[0].probabilities.shape == (200, 10)
    np.testing.assert_allclose(runs[0].probabilities.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(runs[0].probabilities, runs[1].probabilities, atol=1e-6)
    assert (runs[0].probabilities.argmax(1) == labels).mean() > 0.5


def test_cnn_is_deterministic_for_a_seed():
    images, labels = digit_images(300)
    runs = [
        out_of_sample_probabilities(
            "cnn_once_heads", images=images, labels=labels, n_classes=10, train_config=TINY, seed=3
        ).probabilities
        for _ in range(2)
    ]
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-5)


def test_patch_features_are_mirror_invariant():
    images, _ = digit_images(60)
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    features = patch_features(np.concatenate([images, mirrored]), centroids=32)
    np.testing.assert_allclose(features[:60], features[60:], rtol=1e-5, atol=1e-4)
    plain = patch_features(np.concatenate([images, mirrored]), centroids=32, mirror=False)
    assert not np.allclose(plain[:60], plain[60:], rtol=1e-3, atol=1e-2)


def test_patch_encoding_matches_the_definition_at_any_batch_size():
    """The batched encoder (one matrix product, in-place activations) against the triangle
    activation written out patch by patch, and independent of how images are batched."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8)
    encoder = PatchKMeans(centroids=8, seed=0).fit(images)
    expected = np.zeros((len(images), 4, 8))
    for n, image in enumerate(torch.from_numpy(images).permute(0, 3, 1, 2).float()):
        for y in range(5):
            for x in range(5):
                patch = image[:, y : y + 6, x : x + 6].reshape(1, -1)
                whitened = (_normalise_patches(patch) - encoder.mean) @ encoder.whitening
                distances = torch.cdist(whitened, encoder.centroids)[0]
                active = (distances.mean() - distances).clamp(min=0)
                expected[n, 2 * (y >= 2) + (x >= 2)] += active.numpy()
    expected = expected.reshape(len(images), -1)
    for batch_size in (1, 5, None, 100):
        encoded = encoder.transform(images, batch_size=batch_size)
        np.testing.assert_allclose(encoded, expected, rtol=1e-4, atol=1e-3)
    assert expected.max() > 1.0  # not vacuous: the patches do activate centroids


def test_stacking_weight_follows_the_model_that_explains_the_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    right = np.full((400, 4), 0.1)
    right[np.arange(400), labels] = 0.7
    uniform = np.full((400, 4), 0.25)
    assert stacking_weight(right, uniform, labels) == 1.0
    assert stacking_weight(uniform, right, labels) == 0.0
    # Each model right on its own half of the rows: both are needed.
    half = np.arange(400) < 200
    first = np.where(half[:, None], right, uniform)
    second = np.where(half[:, None], uniform, right)
    assert 0.3 <= stacking_weight(first, second, labels) <= 0.7


def test_group_held_out_heads_never_see_the_rows_vendors():
    """Each vendor's rows are predicted by a head fitted without any of that vendor's labels: any
    change to a vendor's labels leaves its own rows' probabilities exactly as they were, while
    K-fold heads (which learn a vendor's habits from its other rows) move."""
    features, labels = digit_features()
    membership = np.zeros((len(labels), 3), dtype=bool)
    membership[np.arange(len(labels)), np.arange(len(labels)) % 3] = True
    rows_c = membership[:, 2]
    relabeled = labels.copy()
    relabeled[rows_c & (labels == 3)] = 8  # vendor c calls every 3 an 8

    def both(given):
        result = out_of_sample_probabilities(
            "heads", features=features, labels=given, n_classes=10, holdout_groups=membership
        )
        return result.probabilities, result.group_probabilities, result.group_covered

    kfold, held_out, covered = both(labels)
    kfold_swapped, held_out_swapped, _ = both(relabeled)
    assert covered.all()
    np.testing.assert_allclose(held_out_swapped[rows_c], held_out[rows_c])
    assert not np.allclose(held_out_swapped[~rows_c], held_out[~rows_c])
    threes = rows_c & (labels == 3)
    # The K-fold heads learned the swap from vendor c's other rows; the held-out heads did not.
    assert kfold_swapped[threes, 8].mean() > kfold[threes, 8].mean() + 0.1
    assert held_out_swapped[threes, 3].mean() > 0.7
    np.testing.assert_allclose(held_out.sum(axis=1), 1.0)


def test_group_held_out_heads_leave_rows_without_a_fair_complement_uncovered():
    from auditor.predict.heads import group_held_out_probabilities

    features, labels = digit_features()
    n = len(labels)
    membership = np.zeros((n, 2), dtype=bool)
    membership[: int(n * 0.7), 0] = True  # vendor 0 labeled 70 %: only 30 % left to learn from
    membership[int(n * 0.7) : int(n * 0.9), 1] = True
    probabilities, covered = group_held_out_probabilities(features, labels, 10, membership)
    assert not covered[: int(n * 0.7)].any()
    assert covered[int(n * 0.7) : int(n * 0.9)].all()
    assert not covered[int(n * 0.9) :].any()  # no vendor: nothing to hold out
    assert (probabilities[~covered] == 0).all()


def test_batched_augmentation_is_a_crop_of_the_padded_image_and_a_flip():
    """The one-gather augmentation must equal cropping each zero-padded image at its drawn offset
    and mirroring it where drawn, with the draws in the same order."""
    images, _ = digit_images(40)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    augmented = _augment(batch, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    n, _, h, w = batch.shape
    pad = h // 8
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad))
    for i in range(n):
        dy, dx = offsets[i].tolist()
        expected = padded[i, :, dy : dy + h, dx : dx + w]
        if flips[i]:
            expected = expected.flip(2)
        assert torch.equal(augmented[i], expected)
    assert flips.any() and not flips.all() and (offsets != pad).any()


def test_cnn_strategies_judge_vendors_with_label_free_patch_heads():
    """A network trained on every vendor's labels would carry their habits into its features, so
    the vendor held-out heads of a CNN strategy are the patch-feature ones, identical to what
    `patch_heads` returns for the same rows and seed."""
    images, labels = digit_images(300)
    membership = np.zeros((300, 2), dtype=bool)
    membership[:100, 0] = True
    membership[100:200, 1] = True
    kwargs = {"images": images, "labels": labels, "n_classes": 10, "holdout_groups": membership}
    cnn = out_of_sample_probabilities("cnn_kfold", train_config=TINY, folds=3, **kwargs)
    patch = out_of_sample_probabilities("patch_heads", **kwargs)
    np.testing.assert_array_equal(cnn.group_covered, patch.group_covered)
    assert cnn.group_covered[:200].all() and not cnn.group_covered[200:].any()
    np.testing.assert_allclose(cnn.group_probabilities, patch.group_probabilities)
