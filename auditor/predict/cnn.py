"""Training the compact CNN on the dataset itself, and reading its probabilities and layer taps.

This is the path for machines without pretrained weights. The data arrive as one uint8 array and
augmentation runs on whole batches in torch, so no DataLoader workers compete with the
convolutions for the few CPU cores a worker usually has. On CUDA the whole array sits on the GPU
(50,000 CIFAR images are 150 MB) and the forward and backward passes run under bf16 autocast; the
random draws stay on a CPU generator, so a seed picks the same crops, flips and batches on either
device.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from auditor.embed.compact import CompactResNet
from auditor.heap import retained_heap

LAYER_TAPS = ("stem", "stage1", "stage2", "stage3", "pool")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults chosen on CIFAR-10N (see bench/results/predict.md): a narrow network and few
    epochs, because on noisy labels a CNN learns the clean pattern first and memorises the wrong
    labels later, and because a CPU pays for every epoch."""

    epochs: int = 12
    width: int = 16
    batch_size: int = 128
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    validation_fraction: float = 0.1
    patience: int = 3


@dataclass
class TrainedCNN:
    """A network with the input normalisation it was trained with."""

    model: CompactResNet
    mean: torch.Tensor
    std: torch.Tensor
    epochs_run: int
    best_validation_accuracy: float
    validation_history: list[float] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.mean.device


def use_available_cores() -> None:
    """Torch defaults to the machine's core count; a container or affinity mask may grant fewer,
    and oversubscribed threads make convolutions slower, not faster."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError("images must be uint8 (n, h, w, 3)")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def _normalise(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = (batch.float() / 255.0 - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def _autocast(device: torch.device):
    """bf16 on GPUs that have it; float32 elsewhere (fp16 training would need loss scaling, and
    bf16 on a CPU is slower, not faster)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by an eighth of the side, and horizontal flip, as one
    gather for the whole batch (a slice per image costs a kernel launch each on a GPU). The
    draws come from `generator` on the CPU whatever device the batch is on."""
    n, c, h, w = batch.shape
    pad = max(1, h // 8)
    padded = nn.functional.pad(batch, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = offsets[:, :1] + torch.arange(h)
    columns = offsets[:, 1:] + torch.arange(w)
    columns = torch.where(flip[:, None], columns.flip(1), columns)
    device = batch.device
    return padded[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows.to(device)[:, None, :, None],
        columns.to(device)[:, None, None, :],
    ]


def _validation_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified held-out part used only to decide when to stop."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        mask[members[: int(len(members) * fraction)]] = True
    return mask


def train_cnn(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    coarse_labels: Sequence[np.ndarray] = (),
    coarse_weight: float = 0.5,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[float], None] | None = None,
) -> TrainedCNN:
    """Train with SGD + one-cycle schedule, stopping early when accuracy on a held-out part (of the
    given, possibly noisy labels) stops improving, and keeping the best epoch's weights.
    `on_epoch` gets the share of the epoch ceiling done after each epoch; what it raises stops
    the training (an audit's cancel or a worker's shutdown).

    Under class-conditional label noise the noisy held-out accuracy rises and falls with the clean
    accuracy, so it is a usable stopping signal without any clean labels.
    """
    if config.width < 16:
        # Width 8 aborts the process (double free) inside torch 2.14's CPU kernels with
        # channels-last inputs; refuse it cleanly instead.
        raise ValueError("width must be at least 16")
    use_available_cores()
    device = torch.device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = _to_tensor(images).to(device)
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    pixels = data.float() / 255.0
    mean = pixels.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    std = pixels.std(dim=(0, 2, 3)).view(1, 3, 1, 1) + 1e-6
    del pixels

    validation = _validation_split(np.asarray(labels), config.validation_fraction, seed)
    train_index = torch.from_numpy(np.flatnonzero(~validation))
    validation_index = np.flatnonzero(validation)

    # Hierarchy-aware training (the paper's branch heads): each coarse level's group per image.
    coarse_targets = [
        torch.from_numpy(np.asarray(c, dtype=np.int64)).to(device) for c in coarse_labels
    ]
    model = CompactResNet(
        n_classes, config.width, coarse_classes=[int(t.max()) + 1 for t in coarse_targets]
    ).to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(
        model.parameters(),
        lr=config.learning_rate,
        momentum=0.9,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = -(-len(train_index) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    trained = TrainedCNN(model, mean, std, 0, -1.0)
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    for epoch in range(config.epochs):
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=generator)].to(device)
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:  # batch norm needs two samples
                continue
            x = _normalise(_augment(data[index], generator), mean, std)
            with _autocast(device):
                if coarse_targets:
                    logits, coarse_logits = model.forward_with_coarse(x)
                    coarse_loss = sum(
                        loss_fn(c.float(), t[index])
                        for c, t in zip(coarse_logits, coarse_targets, strict=True)
                    )
                    loss = loss_fn(logits.float(), targets[index]) + coarse_weight * (
                        coarse_loss / len(coarse_targets)
                    )
                else:
                    loss = loss_fn(model(x).float(), targets[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        trained.epochs_run = epoch + 1
        if on_epoch:
            on_epoch(trained.epochs_run / config.epochs)
        if len(validation_index) == 0:
            best_state = copy.deepcopy(model.state_dict())
            continue
        predicted = predict_probabilities(trained, images[validation_index]).argmax(1)
        accuracy = float((predicted == np.asarray(labels)[validation_index]).mean())
        trained.validation_history.append(accuracy)
        if accuracy > trained.best_validation_accuracy:
            trained.best_validation_accuracy = accuracy
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return trained


def _batches(
    trained: TrainedCNN, images: np.ndarray, batch_size: int = 500
) -> Iterator[torch.Tensor]:
    data = _to_tensor(images)
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size].to(trained.device, non_blocking=True)
        yield _normalise(batch, trained.mean, trained.std)


def predict_probabilities(trained: TrainedCNN, images: np.ndarray) -> np.ndarray:
    trained.model.eval()
    with torch.inference_mode(), _autocast(trained.device), retained_heap():
        parts = [torch.softmax(trained.model(x).float(), 1) for x in _batches(trained, images)]
    return torch.cat(parts).double().cpu().numpy()


def layer_features(trained: TrainedCNN, images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-layer features: each tap globally average-pooled and L2-normalised (float32), from
    input side to output side, for kNN search and per-layer separability."""
    model = trained.model
    model.eval()
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in LAYER_TAPS}

    def hook(name: str):
        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            pooled = output.float().mean(dim=(2, 3)) if output.ndim == 4 else output.float()
            captured[name].append(nn.functional.normalize(pooled.flatten(1), dim=1).cpu())

        return record

    handles = [getattr(model, name).register_forward_hook(hook(name)) for name in LAYER_TAPS]
    try:
        with torch.inference_mode(), _autocast(trained.device), retained_heap():
            for x in _batches(trained, images):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts).numpy().astype(np.float32) for name, parts in captured.items()}
