"""Embedding on a Ray cluster, for datasets one machine's GPU would take days over.

Ray Data streams the items through two actor pools: decoders on CPUs (reading bytes through the
picklable Source, checking the hash, decoding and resizing exactly as `extract.ImageItems` does)
and one CNN actor per GPU (CPU actors when the cluster has no GPU). Each actor rebuilds the backbone
from a `BackboneSpec` and refuses to run if its identity differs from the store's, so a node with
other weights can never put its vectors under this model's key. The driver writes the vectors to
the FeatureStore as shards while results stream in: the store need not be reachable from the nodes
(only the images and the weights files must be), and the return value is the same as
`embed_with_cache`, so a pipeline stage can use either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from auditor.config import get_settings
from auditor.embed.backbones import Backbone, ModelIdentity, Preprocess, build_backbone
from auditor.embed.cache import (
    DEFAULT_SHARD_ROWS,
    Embeddings,
    FeatureStore,
    ShardWriter,
    read_embeddings,
)
from auditor.embed.extract import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_PIXELS,
    Failure,
    ImageItems,
    resolve_device,
)
from auditor.heap import retained_heap
from auditor.ingest.sources import Source

LAYER_PREFIX = "layer_"


class RayUnavailable(RuntimeError):
    """Ray is not installed or no cluster address was given."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a remote actor needs to rebuild the same backbone: weights are a torchvision name
    (looked up in that node's torch hub cache), a checkpoint path visible on every node, or None."""

    architecture: str
    weights: str | None = None
    resolution: int | None = None
    typical_side: int | None = None

    def build(self, device: torch.device | str = "cpu") -> Backbone:
        return build_backbone(
            self.architecture,
            self.weights,
            resolution=self.resolution,
            typical_side=self.typical_side,
            device=device,
        )


class ImageDecoder:
    """Ray Data actor: bytes to uint8 pixels; an actor keeps its source (an open archive) alive
    across batches, where a task would reopen and rescan a tar for every batch."""

    def __init__(self, source: Source, resolution: int, max_pixels: int) -> None:
        self.source = source
        self.preprocess = Preprocess(resolution)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            (str(sha), str(path)) for sha, path in zip(batch["sha256"], batch["path"], strict=True)
        ]
        decoded = ImageItems(items, self.source, self.preprocess, self.max_pixels)
        side = self.preprocess.resolution
        pixels = np.zeros((len(items), side, side, 3), np.uint8)
        reasons = [""] * len(items)
        for position in range(len(items)):
            _, sample = decoded[position]
            if isinstance(sample, Failure):
                reasons[position] = sample.reason
            else:
                pixels[position] = sample.numpy()
        return {"sha256": batch["sha256"], "reason": np.array(reasons), "pixels": pixels}


class EmbeddingActor:
    """Ray Data actor holding one CNN; failed images pass through with zero rows so the driver
    learns why. The device is whatever Ray assigned (CUDA_VISIBLE_DEVICES), not AUDITOR_DEVICE."""

    def __init__(self, spec: BackboneSpec, identity: ModelIdentity) -> None:
        self.backbone = spec.build(resolve_device("auto"))
        # The actor's process does nothing but forward passes, so it keeps their buffers for life.
        self._process_resources = ExitStack()
        self._process_resources.enter_context(retained_heap())
        if self.backbone.identity != identity:
            raise RuntimeError(
                f"this node builds {self.backbone.identity.key} from {spec}, but the feature "
                f"store belongs to {identity.key}; give every node the same weights file"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = batch["reason"] == ""
        result = {"sha256": batch["sha256"], "reason": batch["reason"]}
        vectors = (
            self.backbone.embed(torch.from_numpy(batch["pixels"][decoded])) if decoded.any() else {}
        )
        for layer, dim in self.backbone.layer_dims.items():
            rows = np.zeros((len(decoded), dim), np.float32)
            if vectors:
                rows[decoded] = vectors[layer].cpu().numpy()
            result[LAYER_PREFIX + layer] = rows
        return result


@contextmanager
def ray_connection(address: str | None) -> Iterator[Any]:
    """Reuse a connection the caller opened; otherwise connect (or start one for "local") and
    disconnect afterwards, so a long-lived worker holds no cluster resources between audits."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("Ray is not installed: pip install 'auditor[distributed]'") from exc
    if ray.is_initialized():
        yield ray
        return
    address = address or get_settings().ray_address
    if not address:
        raise RayUnavailable("no Ray cluster: set AUDITOR_RAY_ADDRESS or pass address='local'")
    ray.init(address=address, include_dashboard=False, logging_level="warning")
    try:
        yield ray
    finally:
        ray.shutdown()


def actor_layout(resources: dict[str, float], actors: int | None) -> dict[str, Any]:
    """One CNN actor per GPU; without GPUs half the CPUs embed. Decoders grow into the CPUs left."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    embedders = actors or gpus or max(1, cpus // 2)
    return {
        "embedders": embedders,
        "num_gpus": 1 if gpus else 0,
        "max_decoders": max(1, cpus - embedders),
    }


def embed_with_ray(
    items: Sequence[tuple[str, str]],
    source: Source,
    backbone_spec: BackboneSpec,
    store: FeatureStore,
    *,
    address: str | None = None,
    layers: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    actors: int | None = None,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Embeddings:
    """`embed_with_cache` with the forward passes on a Ray cluster (`address`, else
    AUDITOR_RAY_ADDRESS, else the connection already open in this process).

    Only hashes missing from the store travel to the cluster, once each, so a re-audit costs the
    cluster nothing for images it has seen. `actors` overrides the number of CNN actors.
    """
    # Built here too: the identity must match the store before the cluster does any work, and
    # the layer widths are needed to read the store back.
    backbone = backbone_spec.build("cpu")
    if store.identity != backbone.identity:
        raise ValueError("the feature store belongs to a different model than the backbone spec")
    wanted = list(layers or backbone.layers)
    cached, misses = store.uncached(items, backbone.layers)

    failed: dict[str, str] = {}
    if misses:
        with ray_connection(address) as ray:
            failed = run_on_cluster(
                ray,
                misses,
                source,
                backbone_spec,
                backbone,
                store,
                batch_size=batch_size,
                shard_rows=shard_rows,
                actors=actors,
                progress=progress,
                max_pixels=max_pixels,
            )

    return read_embeddings(store, backbone, items, wanted, failed, len(misses), cached)


def run_on_cluster(
    ray: Any,
    misses: list[tuple[str, str]],
    source: Source,
    spec: BackboneSpec,
    backbone: Backbone,
    store: FeatureStore,
    *,
    batch_size: int,
    shard_rows: int,
    actors: int | None,
    progress: bool,
    max_pixels: int,
) -> dict[str, str]:
    """Stream the misses through the actor pools, writing shards as results arrive; returns
    the failure reason per hash."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    layout = actor_layout(ray.cluster_resources(), actors)
    dataset = ray.data.from_items([{"sha256": sha, "path": path} for sha, path in misses])
    dataset = dataset.map_batches(
        ImageDecoder,
        fn_constructor_kwargs={
            "source": source,
            "resolution": backbone.identity.resolution,
            "max_pixels": max_pixels,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=layout["max_decoders"]),
        num_cpus=1,
    ).map_batches(
        EmbeddingActor,
        fn_constructor_kwargs={"spec": spec, "identity": backbone.identity},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=layout["embedders"]),
        num_cpus=1,
        num_gpus=layout["num_gpus"],
    )

    writer = ShardWriter(store, backbone.layers, shard_rows)
    failed: dict[str, str] = {}

    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        decoded = batch["reason"] == ""
        failed.update(
            (str(sha), str(reason))
            for sha, reason in zip(
                batch["sha256"][~decoded], batch["reason"][~decoded], strict=True
            )
        )
        writer.add(
            [str(sha) for sha in batch["sha256"][decoded]],
            {
                layer: np.asarray(batch[LAYER_PREFIX + layer][decoded], np.float32)
                for layer in backbone.layers
            },
        )
    writer.flush()
    return failed
