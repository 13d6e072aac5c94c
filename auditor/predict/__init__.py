"""Predict: out-of-sample class probabilities (K-fold heads on features, or a CNN trained on the
data itself) and the trained network's per-layer features."""

from auditor.predict.cnn import LAYER_TAPS, TrainConfig
from auditor.predict.heads import kfold_head_probabilities
from auditor.predict.strategies import (
    DEFAULT_STRATEGY,
    LEAKS_OWN_LABEL,
    STRATEGIES,
    OutOfSample,
    out_of_sample_probabilities,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "LAYER_TAPS",
    "LEAKS_OWN_LABEL",
    "STRATEGIES",
    "OutOfSample",
    "TrainConfig",
    "kfold_head_probabilities",
    "out_of_sample_probabilities",
]
