"""The hierarchy-aware CNN: coarse targets from a class tree, and branch heads that train."""

from __future__ import annotations

import numpy as np
import torch

from auditor.predict.cnn import TrainConfig, predict_probabilities, train_cnn
from auditor.predict.hierarchical import coarse_labels
from auditor.predict.strategies import LEAKS_OWN_LABEL, out_of_sample_probabilities

TREE = {
    "name": "root",
    "children": [
        {
            "name": "animal",
            "children": [
                {"name": "pets", "children": [{"name": "cat"}, {"name": "dog"}]},
                {"name": "deer"},
            ],
        },
        {"name": "vehicle", "children": [{"name": "car"}, {"name": "truck"}]},
    ],
}
NAMES = ["cat", "dog", "deer", "car", "truck"]


def test_coarse_labels_follow_the_tree_from_the_coarsest_level():
    labels = np.array([0, 1, 2, 3, 4, 0])
    levels = coarse_labels(TREE, NAMES, labels)
    assert len(levels) == 2
    top, middle = levels
    assert len(set(top[[0, 1, 2, 5]])) == 1 and len(set(top[[3, 4]])) == 1 and top[0] != top[3]
    assert middle[0] == middle[1] == middle[5] and len({middle[0], middle[2], middle[3]}) == 3


def tiny_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    colours = np.array([[200, 40, 40], [220, 90, 40], [180, 60, 90], [40, 40, 200], [40, 90, 220]])
    images = colours[labels][:, None, None, :] + rng.normal(0, 20, (n, 16, 16, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def test_hierarchy_aware_training_grows_and_trains_coarse_heads():
    images, labels = tiny_images(160)
    coarse = coarse_labels(TREE, NAMES, labels)
    trained = train_cnn(
        images, labels, 5, config=TrainConfig(epochs=2, batch_size=32), coarse_labels=coarse
    )
    assert [head.out_features for head in trained.model.coarse_heads] == [2, 4]
    logits, coarse_logits = trained.model.forward_with_coarse(
        torch.zeros(2, 3, 16, 16).to(memory_format=torch.channels_last)
    )
    assert logits.shape == (2, 5) and [c.shape for c in coarse_logits] == [(2, 2), (2, 4)]
    assert len(trained.validation_history) == trained.epochs_run
    probabilities = predict_probabilities(trained, images)
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_patch_cnn_averages_two_out_of_sample_models_and_returns_layers():
    images, labels = tiny_images(120, seed=1)
    result = out_of_sample_probabilities(
        "patch_cnn", images=images, labels=labels, n_classes=5, epochs=1
    )
    assert result.probabilities.shape == (120, 5)
    assert np.allclose(result.probabilities.sum(axis=1), 1.0)
    assert list(result.layer_features) == ["stem", "stage1", "stage2", "stage3", "pool"]
    assert LEAKS_OWN_LABEL["patch_cnn"] is False
