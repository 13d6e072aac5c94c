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

People err more on the images any model finds hard, which a class-conditional matrix cannot
express: it then reads those errors as the model's doubt and underestimates the noisier sources.
So a source's error rate may also vary across strata of the model's confidence (terciles, say): a
logistic model with one term per true class and one per stratum, the wrong labels still going
where the pooled matrix sends them. Whether the data support the extra terms is decided by BIC
(`select_noise_model`), since on small sets the low-confidence strata cannot tell a vendor's
errors from the model's and a stratified model overshoots (bench/results/vendors-*.md).
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
    """Per probability row the posterior over its true class; per source (and stratum, sources
    major) the noise matrix P(label | true class); the mean log-likelihood of the labels under
    the fitted model; and the number of free noise parameters, for model selection."""

    posterior: np.ndarray
    noise: np.ndarray
    log_likelihood: float
    parameters: int


def stratum_error_rates(trials: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """(strata, classes) error rates with logit(rate) = class term + stratum term (the first
    stratum's term fixed at 0), fitted by Newton's method to expected counts. A small ridge keeps
    empty cells finite."""
    n_strata, n_classes = trials.shape
    design = np.zeros((n_strata * n_classes, n_classes + n_strata - 1))
    cells = np.arange(n_strata * n_classes)
    design[cells, cells % n_classes] = 1.0
    later = cells >= n_classes
    design[cells[later], n_classes + cells[later] // n_classes - 1] = 1.0
    weight, wrong = trials.ravel(), errors.ravel()
    pooled = np.clip(errors.sum(0) / np.maximum(trials.sum(0), 1e-9), 1e-4, 1 - 1e-4)
    beta = np.zeros(design.shape[1])
    beta[:n_classes] = np.log(pooled / (1 - pooled))
    ridge = 1e-3 * np.eye(len(beta))
    for _ in range(50):
        rate = 1.0 / (1.0 + np.exp(-(design @ beta)))
        gradient = design.T @ (wrong - weight * rate) - 1e-3 * beta
        hessian = design.T @ (design * (weight * rate * (1 - rate))[:, None]) + ridge
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    return (1.0 / (1.0 + np.exp(-(design @ beta)))).reshape(n_strata, n_classes)


def _stratified_noise(
    posterior: np.ndarray, sources: np.ndarray, strata: np.ndarray, classes: np.ndarray,
    n_sources: int, n_strata: int, smoothing: float,
) -> np.ndarray:  # fmt: skip
    """The M-step: per source, the pooled class-conditional matrix (where wrong labels go), its
    error rates then set per stratum by `stratum_error_rates` when there are several."""
    n_classes = posterior.shape[1]
    counts = np.zeros((n_sources, n_strata, n_classes, n_classes))
    np.add.at(counts, (sources, strata, slice(None), classes), posterior)
    pooled = counts.sum(axis=1) + smoothing
    pooled /= pooled.sum(axis=2, keepdims=True)
    if n_strata == 1:
        return pooled
    diagonal = np.arange(n_classes)
    noise = np.empty((n_sources, n_strata, n_classes, n_classes))
    for source in range(n_sources):
        trials = counts[source].sum(axis=2)
        errors = trials - counts[source][:, diagonal, diagonal]
        rates = stratum_error_rates(trials, errors)
        wrong_share = pooled[source] / (1.0 - pooled[source][diagonal, diagonal])[:, None]
        noise[source] = rates[:, :, None] * wrong_share[None]
        noise[source][:, diagonal, diagonal] = 1.0 - rates
    return noise.reshape(n_sources * n_strata, n_classes, n_classes)


def fit_noise_model(
    probabilities: np.ndarray,
    rows: np.ndarray,
    sources: np.ndarray,
    classes: np.ndarray,
    sharpness: float,
    iterations: int = 100,
    smoothing: float = 0.01,
    strata: np.ndarray | None = None,
) -> NoiseFit:
    """Per probability row, the posterior over the true class given the model and every label
    on it. Labels are (row, source index, class) triples; a row may carry several. `strata`
    (one index per label) lets each source's error rates differ between strata."""
    n_rows, n_classes = probabilities.shape
    n_sources = int(sources.max()) + 1 if len(sources) else 1
    strata = np.zeros(len(rows), dtype=np.int64) if strata is None else np.asarray(strata)
    n_strata = int(strata.max()) + 1 if len(strata) else 1
    matrix_of_label = sources * n_strata + strata
    prior = sharpened(probabilities, sharpness)
    noise = np.full(
        (n_sources * n_strata, n_classes, n_classes), (1 - INITIAL_ACCURACY) / max(1, n_classes - 1)
    )
    noise[:, np.arange(n_classes), np.arange(n_classes)] = INITIAL_ACCURACY
    posterior = prior
    for iteration in range(iterations):
        if iteration:
            noise = _stratified_noise(
                posterior[rows], sources, strata, classes, n_sources, n_strata, smoothing
            )
        joint = np.log(prior)
        np.add.at(joint, rows, np.log(noise[matrix_of_label, :, classes]))
        evidence = logsumexp(joint, axis=1, keepdims=True)
        updated = np.exp(joint - evidence)
        converged = np.abs(updated - posterior).max() < 1e-6
        posterior = updated
        if converged:
            break
    labeled = np.unique(rows)
    log_likelihood = float(evidence[labeled].sum() / max(1, len(rows)))
    present = len(np.unique(sources)) if len(sources) else 1
    parameters = present * (n_classes * (n_classes - 1) + n_strata - 1)
    return NoiseFit(posterior, noise, log_likelihood, parameters)


def likeliest_sharpness(
    probabilities: np.ndarray,
    rows: np.ndarray,
    sources: np.ndarray,
    classes: np.ndarray,
    bounds: tuple[float, float] = (0.5, 6.0),
    strata: np.ndarray | None = None,
) -> float:
    """The sharpness under which the fitted noise model makes the labels most likely.

    Only meaningful when the probabilities did not learn from these labels: a model fitted to
    them already agrees with their noise, and the likelihood then rewards reading too little of
    its doubt as noise. Where they are independent it calibrates the model's confidence against
    the labels, the noise matrices taking up what is systematic.
    """

    def negative_log_likelihood(power: float) -> float:
        fit = fit_noise_model(probabilities, rows, sources, classes, power, strata=strata)
        return -fit.log_likelihood

    result = minimize_scalar(
        negative_log_likelihood,
        bounds=bounds,
        method="bounded",
        options={"xatol": 0.02},
    )
    return float(result.x)


def confidence_strata(probabilities: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """Per label, which of `count` equal shares of the model's top probability its row falls in
    (0 = least confident). Label-free: the labels' own classes play no part."""
    confidence = probabilities[rows].max(axis=1)
    if count < 2 or len(confidence) == 0:
        return np.zeros(len(rows), dtype=np.int64)
    edges = np.quantile(confidence, np.linspace(0.0, 1.0, count + 1)[1:-1])
    return np.searchsorted(edges, confidence).astype(np.int64)


STRATA_CANDIDATES = (1, 3)


@dataclass
class NoiseModelChoice:
    """The selected number of confidence strata, its likeliest sharpness, and every candidate's
    BIC (lower is better)."""

    strata: int
    sharpness: float
    bic: dict[int, float]


def select_noise_model(
    probabilities: np.ndarray,
    rows: np.ndarray,
    sources: np.ndarray,
    classes: np.ndarray,
    candidates: tuple[int, ...] = STRATA_CANDIDATES,
) -> NoiseModelChoice:
    """Class-conditional noise (1 stratum) or error rates that also vary with the model's
    confidence, whichever has the lower BIC, each at its likeliest sharpness.

    Like the sharpness, only meaningful for probabilities that never saw these labels. On
    CIFAR-10N's human labels the stratified model won at 25,000 and 50,000 images and lost at
    7,500 and 15,000, where it would have overshot the cleanest vendor (bench/results/vendors-*.md).
    """
    bic, sharpness = {}, {}
    for count in candidates:
        strata = confidence_strata(probabilities, rows, count)
        sharpness[count] = likeliest_sharpness(probabilities, rows, sources, classes, strata=strata)
        fit = fit_noise_model(
            probabilities, rows, sources, classes, sharpness[count], strata=strata
        )
        free = fit.parameters + 1  # the sharpness too
        bic[count] = float(-2 * fit.log_likelihood * len(rows) + free * np.log(len(rows)))
    chosen = min(candidates, key=lambda count: bic[count])
    return NoiseModelChoice(chosen, sharpness[chosen], bic)
