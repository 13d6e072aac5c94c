"""Batched feature extraction: read, decode and resize in a DataLoader, forward in the main process.

Images are read from the source by content hash and path, decoded with the same `decode_rgb` the
ingest stage used, and checked against their hash, so a vector is never stored under the hash of
bytes it was not computed from. A file that fails is reported and skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch.utils.data import DataLoader, Dataset, get_worker_info

from auditor.embed.backbones import Backbone, Preprocess
from auditor.heap import retained_heap
from auditor.ingest.decode import UnreadableImage
from auditor.ingest.sources import Source

DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class Failure:
    """An image that could not be embedded, with the reason shown to the curator."""

    index: int
    sha256: str
    path: str
    reason: str


@dataclass
class LoadedBatch:
    """What a worker hands back: positions of the decoded images, their pixels, and failures.

    `pixels` holds one stacked tensor per image size (one, unless small images of several sizes
    wait to be upscaled on the device); their rows, concatenated, follow `indices`."""

    indices: list[int]
    pixels: list[torch.Tensor]
    failures: list[Failure]

    def pin_memory(self) -> LoadedBatch:
        """Called by the DataLoader's pinning thread on CUDA so the copy can be non-blocking."""
        self.pixels = [group.pin_memory() for group in self.pixels]
        return self


@dataclass
class Extraction:
    """Per-layer float32 arrays aligned with the items; rows of failed items are zero."""

    features: dict[str, np.ndarray]
    failures: list[Failure] = field(default_factory=list)


class ImageItems(Dataset):
    """(sha256, path) items read from a Source; runs inside DataLoader worker processes."""

    def __init__(
        self,
        items: Sequence[tuple[str, str]],
        source: Source,
        preprocess: Preprocess,
        max_pixels: int,
    ) -> None:
        self.items = list(items)
        self.source = source
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | Failure]:
        sha256, path = self.items[index]
        try:
            data = self.source.read_bytes(path)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise UnreadableImage("content changed since ingest (SHA-256 differs)")
            return index, self.preprocess.from_bytes(data, self.max_pixels)
        except (
            Exception
        ) as exc:  # any bad file (a corrupt zip member too) is a finding, not a crash
            return index, Failure(index, sha256, path, f"{type(exc).__name__}: {exc}")


def give_worker_own_source(_worker_id: int) -> None:
    """A forked worker shares the parent's open archive file and its offset; concurrent reads
    through one descriptor corrupt each other (bad CRC). A pickled copy drops the handle, so each
    worker opens the archive afresh."""
    dataset = get_worker_info().dataset
    dataset.source = pickle.loads(pickle.dumps(dataset.source))


def collate_loaded(samples: list[tuple[int, torch.Tensor | Failure]]) -> LoadedBatch:
    by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for index, sample in samples:
        if isinstance(sample, torch.Tensor):
            by_size.setdefault(tuple(sample.shape), []).append((index, sample))
    indices = [index for group in by_size.values() for index, _ in group]
    pixels = [torch.stack([sample for _, sample in group]) for group in by_size.values()]
    failures = [sample for _, sample in samples if isinstance(sample, Failure)]
    return LoadedBatch(indices, pixels, failures)


class ImagesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "- img/s", style="progress.data.speed")


def progress_bar(enabled: bool) -> Progress:
    """On stderr, so a command's JSON on stdout stays clean."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        ImagesPerSecond(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def default_workers(device: torch.device) -> int:
    """On CPU none: the in-process loader thread decodes while torch uses every core. On two
    cores that embedded fastest for the compact CNN at 32 and resnet18 at 224 alike, and one worker
    process with one torch thread slowest (bench/results/embed.md). On CUDA the cores are free
    for decoding, so half of them run worker processes and keep the GPU fed."""
    if device.type == "cuda":
        return max(1, (os.cpu_count() or 1) // 2)
    return 0


def default_threads(num_workers: int) -> int:
    """Cores left after the loader workers, at least one: oversubscribing cores slows both."""
    return max(1, (os.cpu_count() or 1) - num_workers)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prefetched_batches(dataset: ImageItems, batch_size: int, pin: bool) -> Iterator[LoadedBatch]:
    """Batches read in one background thread while the caller runs the forward pass.

    Without worker processes the loader would otherwise stall the model for every batch. File
    reads, SHA-256 and Pillow's decoders release the GIL, so a thread overlaps them with the
    forward without the start-up and copying costs of a worker process.
    """

    def load(start: int) -> LoadedBatch:
        end = min(start + batch_size, len(dataset))
        batch = collate_loaded([dataset[index] for index in range(start, end)])
        return batch.pin_memory() if pin else batch

    starts = list(range(0, len(dataset), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-loader") as pool:
        pending = pool.submit(load, starts[0])
        for following in starts[1:]:
            batch = pending.result()
            pending = pool.submit(load, following)
            yield batch
        yield pending.result()


def make_loader(
    items: Sequence[tuple[str, str]],
    source: Source,
    backbone: Backbone,
    batch_size: int,
    num_workers: int,
    max_pixels: int,
) -> Iterable[LoadedBatch]:
    dataset = ImageItems(items, source, backbone.preprocess, max_pixels)
    if num_workers == 0:
        return prefetched_batches(dataset, batch_size, pin=backbone.device.type == "cuda")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_loaded,
        pin_memory=backbone.device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
        worker_init_fn=give_worker_own_source,
    )


def iter_embedded(
    items: Sequence[tuple[str, str]],
    source: Source,
    backbone: Backbone,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    description: str = "embedding",
) -> Iterator[tuple[list[int], dict[str, np.ndarray], list[Failure]]]:
    """Yield (item positions, {layer: float32 rows}, failures) batch by batch.

    A generator so the cache can write shards as it goes and a crash loses one shard, not a run.
    The heap keeps the forward's freed buffers for the next batch (`retained_heap`).
    """
    workers = default_workers(backbone.device) if num_workers is None else num_workers
    loader = make_loader(items, source, backbone, batch_size, workers, max_pixels)
    cpu_threads = threads or default_threads(workers)
    with torch_threads(cpu_threads), retained_heap(), progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(items))
        for batch in loader:
            features: dict[str, np.ndarray] = {}
            if batch.pixels:
                vectors = backbone.embed(batch.pixels)
                features = {layer: v.cpu().numpy() for layer, v in vectors.items()}
            bar.advance(task, len(batch.indices) + len(batch.failures))
            yield batch.indices, features, batch.failures


def extract_features(
    items: Sequence[tuple[str, str]],
    source: Source,
    backbone: Backbone,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Extraction:
    """Embed every item; per-layer float32 arrays aligned with `items` plus the failures."""
    features = {
        layer: np.zeros((len(items), dim), np.float32) for layer, dim in backbone.layer_dims.items()
    }
    failures: list[Failure] = []
    for indices, vectors, batch_failures in iter_embedded(
        items,
        source,
        backbone,
        batch_size=batch_size,
        num_workers=num_workers,
        threads=threads,
        progress=progress,
        max_pixels=max_pixels,
    ):
        for layer, rows in vectors.items():
            features[layer][indices] = rows
        failures.extend(batch_failures)
    return Extraction(features, failures)


def resolve_device(setting: str) -> torch.device:
    """AUDITOR_DEVICE: auto picks CUDA when present, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
