"""The label-noise model shared by the mislabel check and the vendor estimates.

Each label source (the dataset's labels, or each labeling vendor) has a class-conditional noise
matrix P(label | true class); each image has a prior over its true class from the audit's
out-of-sample probabilities. Expectation-maximisation fits the matrices and every image's
posterior together (the latent-class model of Dawid and Skene, 1979, with a model prior).

Probabilities learned from noisy labels spread mass the way the noise does, so the prior is the
model's output sharpened: raised to a power and renormalised. The power decides how much of the
model's doubt is read as label noise. Where the probabilities come from models that never saw
the labels being judged (the vendor estimates), the power is itself fitted: the one under which the
fitted model gives the labels the highest likelihood (`likeliest_sharpness`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

# EM starts from sources that are right this often: a uniform start is a fixed point where every
# label looks like noise.
INITIAL_ACCURACY = 0.8


def sharpened(probabilities: np.ndarray, sharpness: float) -> np.ndarray:
    prior = np.power(np.clip(probabilities, 1e-12, None), sharpness)
    return prior / prior.sum(axis=1, keepdims=True)


@dataclass
class NoiseFit:
    """Per probability row the posterior over its true class; per source the noise matrix
    P(label | true class); and the mean log-likelihood of the labels under the fitted model."""

    posterior: np.ndarray
    noise: np.ndarray
    log_likelihood: float


def fit_noise_model(
    probabilities: np.ndarray,
    rows: np.ndarray,
    sources: np.ndarray,
    classes: np.ndarray,
    sharpness: float,
    iterations: int = 100,
    smoothing: float = 0.01,
) -> NoiseFit:
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
        joint = np.log(prior)
        np.add.at(joint, rows, np.log(noise[sources, :, classes]))
        evidence = logsumexp(joint, axis=1, keepdims=True)
        updated = np.exp(joint - evidence)
        converged = np.abs(updated - posterior).max() < 1e-6
        posterior = updated
        if converged:
            break
    labeled = np.unique(rows)
    log_likelihood = float(evidence[labeled].sum() / max(1, len(rows)))
    return NoiseFit(posterior, noise, log_likelihood)


def likeliest_sharpness(
    probabilities: np.ndarray,
    rows: np.ndarray,
    sources: np.ndarray,
    classes: np.ndarray,
    bounds: tuple[float, float] = (0.5, 6.0),
) -> float:
    """The sharpness under which the fitted noise model makes the labels most likely.

    Only meaningful when the probabilities did not learn from these labels: a model fitted to
    them already agrees with their noise, and the likelihood then rewards reading too little of
    its doubt as noise. Where they are independent it calibrates the model's confidence against
    the labels, the noise matrices taking up what is systematic.
    """
    result = minimize_scalar(
        lambda power: -fit_noise_model(probabilities, rows, sources, classes, power).log_likelihood,
        bounds=bounds,
        method="bounded",
        options={"xatol": 0.02},
    )
    return float(result.x)
