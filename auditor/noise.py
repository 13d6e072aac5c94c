"""The label-noise model shared by the mislabel check and the vendor estimates.

Each label source (the dataset's labels, or each labeling vendor) has a class-conditional noise
matrix P(label | true class); each image has a prior over its true class from the audit's
out-of-sample probabilities. Expectation-maximisation fits the matrices and every image's
posterior together (the latent-class model of Dawid and Skene, 1979, with a model prior).

Probabilities learned from noisy labels spread mass the way the noise does, so the prior is the
model's output sharpened: raised to a power and renormalised. The power decides how much of the
model's doubt is read as label noise; the callers choose it from CIFAR-10N measurements.
"""

from __future__ import annotations

import numpy as np

# EM starts from sources that are right this often: a uniform start is a fixed point where every
# label looks like noise.
INITIAL_ACCURACY = 0.8


def sharpened(probabilities: np.ndarray, sharpness: float) -> np.ndarray:
    prior = np.power(np.clip(probabilities, 1e-12, None), sharpness)
    return prior / prior.sum(axis=1, keepdims=True)


def noise_posteriors(
    probabilities: np.ndarray,
    rows: np.ndarray,
    sources: np.ndarray,
    classes: np.ndarray,
    sharpness: float,
    iterations: int = 100,
    smoothing: float = 0.01,
) -> np.ndarray:
    """Per probability row, the posterior over the true class given the model and every label
    on it. Labels are (row, source index, class) triples; a row may carry several."""
    n_rows, n_classes = probabilities.shape
    n_sources = int(sources.max()) + 1 if len(sources) else 1
    prior = sharpened(probabilities, sharpness)
    noise = np.full(
        (n_sources, n_classes, n_classes), (1 - INITIAL_ACCURACY) / max(1, n_classes - 1)
    )
    noise[:, np.arange(n_classes), np.arange(n_classes)] = INITIAL_ACCURACY
    posterior = prior
    for iteration in range(iterations):
        if iteration:
            noise = np.full((n_sources, n_classes, n_classes), smoothing)
            np.add.at(noise, (sources, slice(None), classes), posterior[rows])
            noise /= noise.sum(axis=2, keepdims=True)
        log_posterior = np.log(prior)
        np.add.at(log_posterior, rows, np.log(noise[sources, :, classes]))
        log_posterior -= log_posterior.max(axis=1, keepdims=True)
        updated = np.exp(log_posterior)
        updated /= updated.sum(axis=1, keepdims=True)
        converged = np.abs(updated - posterior).max() < 1e-6
        posterior = updated
        if converged:
            break
    return posterior
