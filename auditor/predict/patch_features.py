"""Label-free image features from k-means on whitened patches (Coates, Lee and Ng, AISTATS 2011).

Without pretrained weights, a CNN has to be trained on the dataset's own, possibly wrong, labels
before its features mean anything, and on a CPU that is the expensive part. A single layer of
k-means filters learns from pixels alone: it cannot carry any row's label (so K-fold heads on it are
strictly out-of-sample), costs one pass over the images, and on small images separates classes
nearly as well as a briefly trained CNN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from auditor.heap import retained_heap


def _normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    """Per-patch brightness and contrast normalisation (rows are patches)."""
    patches = patches - patches.mean(dim=1, keepdim=True)
    return patches / torch.sqrt(patches.var(dim=1, keepdim=True) + 10.0)


# Floats in one batch's distance block: a few MB stays in a CPU's cache, a GPU wants work in bulk.
CPU_BLOCK_FLOATS = 1 << 21
GPU_BLOCK_FLOATS = 1 << 27


class PatchKMeans:
    """Whitened k-means dictionary and the triangle-activation, quadrant-pooled encoder."""

    def __init__(
        self,
        centroids: int = 400,
        patch: int = 6,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.n_centroids = centroids
        self.patch = patch
        self.seed = seed
        self.device = torch.device(device)
        self.mean = torch.zeros(0)
        self.whitening = torch.zeros(0)
        self.centroids = torch.zeros(0)

    def fit(
        self, images: np.ndarray, n_patches: int = 100_000, iterations: int = 15
    ) -> PatchKMeans:
        generator = torch.Generator().manual_seed(self.seed)
        pixels = torch.from_numpy(images)
        n, h, w, _ = pixels.shape
        p = self.patch
        n_patches = min(n_patches, 50 * n)  # beyond this a small set only repeats its patches
        which = torch.randint(0, n, (n_patches,), generator=generator)
        ys = torch.randint(0, h - p + 1, (n_patches,), generator=generator)
        xs = torch.randint(0, w - p + 1, (n_patches,), generator=generator)
        offsets = torch.arange(p)
        rows, columns = (ys[:, None] + offsets)[:, :, None], (xs[:, None] + offsets)[:, None, :]
        patches = pixels[which[:, None, None], rows, columns].permute(0, 3, 1, 2).flatten(1)
        patches = _normalise_patches(patches.to(self.device).float()).double()
        self.mean = patches.mean(0)
        centred = patches - self.mean
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(centred))
        self.whitening = (eigenvectors / torch.sqrt(eigenvalues + 0.1)) @ eigenvectors.T
        whitened = (centred @ self.whitening).float()
        self.mean, self.whitening = self.mean.float(), self.whitening.float()

        first = torch.randperm(len(whitened), generator=generator)[: self.n_centroids]
        centroids = whitened[first.to(self.device)]
        for _ in range(iterations):
            # The nearest centre by |c|^2 - 2 x.c: one matrix product, the |x|^2 term is common.
            nearness = torch.addmm((centroids**2).sum(1), whitened, centroids.T, alpha=-2)
            assignment = nearness.argmin(1)
            sums = torch.zeros_like(centroids).index_add_(0, assignment, whitened)
            counts = torch.bincount(assignment, minlength=self.n_centroids).float()[:, None]
            # An empty cluster keeps its old centre rather than collapsing to the origin.
            centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        self.centroids = centroids
        return self

    def transform(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """(n, 4 * centroids) float32: triangle activations summed over the image's quadrants.

        The distance block (patches x centroids) is the cost, and it is memory-bound: on the CPU
        a batch whose block fits in cache encodes about 4 times faster than 200 images at once
        (bench/results/patch-encoding.md); a GPU wants large batches.
        """
        p = self.patch
        h, w = images.shape[1:3]
        gh, gw = h - p + 1, w - p + 1
        if batch_size is None:
            block = GPU_BLOCK_FLOATS if self.device.type == "cuda" else CPU_BLOCK_FLOATS
            batch_size = max(1, block // (gh * gw * self.n_centroids))
        squared_norms = (self.centroids**2).sum(1)
        transposed = self.centroids.T.contiguous()
        top, left = gh // 2, gw // 2
        out = []
        with torch.inference_mode(), retained_heap():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size]).to(self.device)
                x = batch.permute(0, 3, 1, 2).float()
                patches = nn.functional.unfold(x, p).transpose(1, 2).reshape(-1, 3 * p * p)
                whitened = (_normalise_patches(patches) - self.mean) @ self.whitening
                offset = squared_norms + (whitened**2).sum(1, keepdim=True)
                distances = torch.addmm(offset, whitened, transposed, alpha=-2)
                distances.clamp_(min=0).sqrt_()
                mean = distances.mean(1, keepdim=True)
                active = distances.neg_().add_(mean).clamp_(min=0)
                grid = active.reshape(len(batch), gh, gw, -1)
                quadrants = (
                    grid[:, :top, :left],
                    grid[:, :top, left:],
                    grid[:, top:, :left],
                    grid[:, top:, left:],
                )
                out.append(torch.cat([q.sum(dim=(1, 2)) for q in quadrants], 1).cpu())
        return torch.cat(out).numpy()


def shifted(images: np.ndarray, dy: int, dx: int, pad: int = 4) -> np.ndarray:
    """(n, h, w, c) images moved by (dy, dx) pixels, the uncovered border filled by reflection."""
    if max(abs(dy), abs(dx)) > pad:
        raise ValueError(f"a shift of ({dy}, {dx}) exceeds the padding of {pad}")
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    return np.ascontiguousarray(padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w])


def patch_feature_views(
    images: np.ndarray,
    shifts: Sequence[tuple[int, int]] = (),
    centroids: int = 400,
    seed: int = 0,
    mirror: bool = True,
    device: torch.device | str = "cpu",
) -> list[np.ndarray]:
    """The images' encoding, then one encoding per shifted copy, all with one dictionary.

    Shifted copies are augmentation for the heads: the quadrant pooling moves with the object,
    and a head that has seen each image a few pixels off learns less of where things happen to
    sit in the frame."""
    encoder = PatchKMeans(centroids, seed=seed, device=device).fit(images)

    def encode(pixels: np.ndarray) -> np.ndarray:
        features = encoder.transform(pixels)
        if mirror:
            features += encoder.transform(np.ascontiguousarray(pixels[:, :, ::-1]))
        return features

    return [encode(images)] + [encode(shifted(images, dy, dx)) for dy, dx in shifts]


def patch_features(
    images: np.ndarray,
    centroids: int = 400,
    seed: int = 0,
    mirror: bool = True,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Fit the dictionary on the images themselves (no labels) and encode them.

    With `mirror` each image's encoding is summed with its left-right mirror's: an object and its
    mirror image are the same class, and the quadrant pooling alone would tell them apart. On
    10,000 CIFAR-10N images this raised the heads' held-out accuracy from 0.553 to 0.592 for
    half again the encoding time (bench/results/predict.md).
    """
    return patch_feature_views(images, (), centroids, seed, mirror, device)[0]
