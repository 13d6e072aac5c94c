"""Named CNN backbones with forward hooks tapping several depths, as in the paper's per-layer view.

Every backbone exposes the same tap names, from input to output: `stem`, `stage1`..`stageN`, `pool`.
`pool` is the input of the final classifier layer (the penultimate features) and is the vector used
for search; the others feed the per-layer separability analysis. Each tap is globally average-pooled
to one vector per image and L2-normalised, so inner product is cosine similarity everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageOps
from torch import nn

from auditor.embed.compact import CompactResNet
from auditor.embed.fast_jpeg import decode_plain_jpeg
from auditor.embed.weights import (
    ResolvedWeights,
    WeightsUnavailable,
    hub_checkpoint_path,
    load_state_dict,
    resolve_weights,
)
from auditor.ingest.decode import decode_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = 224
SMALLEST_RESOLUTION = 32
COMPACT_RESOLUTION = 32
RANDOM_INIT_SEED = 0
# Randomly initialised deep nets shrink activations to ~1e-12; the default eps would zero them.
TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class Architecture:
    """Taps as (layer name, module path) from input to output; `head` is the final Linear."""

    taps: tuple[tuple[str, str], ...]
    head: str


RESNET = Architecture(
    taps=(
        ("stem", "maxpool"),
        ("stage1", "layer1"),
        ("stage2", "layer2"),
        ("stage3", "layer3"),
        ("stage4", "layer4"),
        ("pool", "avgpool"),
    ),
    head="fc",
)

ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": RESNET,
    "resnet50": RESNET,
    # Stages end where the spatial resolution halves next (56, 28, 14, 7 at 224 input).
    "efficientnet_b0": Architecture(
        taps=(
            ("stem", "features.0"),
            ("stage1", "features.2"),
            ("stage2", "features.3"),
            ("stage3", "features.5"),
            ("stage4", "features.7"),
            ("pool", "avgpool"),
        ),
        head="classifier.1",
    ),
    # ConvNeXt's classifier layer-normalises the pooled vector first; the penultimate features
    # are that normalised vector (the Flatten output), not the raw average pool.
    "convnext_tiny": Architecture(
        taps=(
            ("stem", "features.0"),
            ("stage1", "features.1"),
            ("stage2", "features.3"),
            ("stage3", "features.5"),
            ("stage4", "features.7"),
            ("pool", "classifier.1"),
        ),
        head="classifier.2",
    ),
    # MobileNetV3's penultimate features are the 1280-d hidden layer of its classifier.
    "mobilenet_v3_large": Architecture(
        taps=(
            ("stem", "features.0"),
            ("stage1", "features.3"),
            ("stage2", "features.6"),
            ("stage3", "features.12"),
            ("stage4", "features.16"),
            ("pool", "classifier.1"),
        ),
        head="classifier.3",
    ),
    "compact": Architecture(
        taps=(
            ("stem", "stem"),
            ("stage1", "stage1"),
            ("stage2", "stage2"),
            ("stage3", "stage3"),
            ("pool", "pool"),
        ),
        head="classifier",
    ),
}
SEARCH_LAYER = "pool"


@dataclass(frozen=True)
class ModelIdentity:
    """Everything that changes the vectors; its `key` names the feature cache directory.

    `weights_sha256` is the SHA-256 of the weights file, or for random initialisation a digest
    of the initialised parameters, so caches of two different random models can never mix.
    """

    architecture: str
    weights: str
    weights_sha256: str
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    taps: tuple[str, ...]

    @property
    def key(self) -> str:
        material = json.dumps(asdict(self), sort_keys=True).encode()
        digest = hashlib.sha256(material).hexdigest()[:16]
        weights = "".join(c if c.isalnum() else "_" for c in self.weights)[:40]
        return f"{self.architecture}-{weights}-r{self.resolution}-{digest}"


@dataclass(frozen=True)
class Preprocess:
    """Image to uint8 HWC tensor at the model's resolution; small and picklable for workers.

    Normalisation happens on the device in `Backbone.embed`, so workers and pinned memory move
    uint8 (a quarter of float32) and an NHWC batch is channels_last once permuted. With
    `upscale_on_device` an image smaller than the resolution is only centre-cropped to a square
    and left at its own size: the device upscales it after the copy. A 32x32 image then crosses
    to a GPU as 3 KB instead of the 150 KB it takes at 224, and the CPU does no resampling.
    """

    resolution: int
    upscale_on_device: bool = False

    def __call__(self, image: Image.Image) -> torch.Tensor:
        side = self.resolution
        if self.upscale_on_device and min(image.size) < side:
            side = min(image.size)
        if image.size != (side, side):
            # Shorter side to `side`, centre crop: ImageOps.fit crops before resizing, so a
            # large image is never resized in full only to be cropped afterwards.
            image = ImageOps.fit(image, (side, side), method=Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))

    def from_bytes(self, data: bytes, max_pixels: int) -> torch.Tensor:
        """What `decode_rgb` and this preprocessing give, by the fast path where it applies."""
        pixels = decode_plain_jpeg(data, self.resolution, smaller=self.upscale_on_device)
        if pixels is None:
            return self(decode_rgb(data, max_pixels))
        return torch.from_numpy(pixels)


class Backbone:
    """A model in eval mode with its taps; `images_forwarded` counts images actually run."""

    def __init__(self, model: nn.Module, identity: ModelIdentity, taps: dict[str, str]) -> None:
        self.model = model.eval()
        self.identity = identity
        self.layers: tuple[str, ...] = tuple(taps)
        self.preprocess = Preprocess(identity.resolution)
        self.images_forwarded = 0
        self.device = torch.device("cpu")
        self._captured: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for layer, path in taps.items():
            modules[path].register_forward_hook(self._capture(layer))
        self._scale = torch.tensor(identity.std).mul(255.0).reciprocal().view(1, 3, 1, 1)
        self._shift = (torch.tensor(identity.mean) / torch.tensor(identity.std)).view(1, 3, 1, 1)

    def _capture(self, layer: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            vectors = output.float()
            vectors = vectors.mean(dim=(2, 3)) if vectors.ndim == 4 else vectors.flatten(1)
            self._captured[layer] = F.normalize(vectors, dim=1, eps=TINY)

        return hook

    def to(self, device: torch.device | str, *, upscale_on_device: bool | None = None) -> Backbone:
        """Move the model; small images are upscaled on the device by default where it is a GPU
        (on the CPU the resampling costs the same wherever it runs)."""
        self.device = torch.device(device)
        if upscale_on_device is None:
            upscale_on_device = self.device.type == "cuda"
        self.preprocess = Preprocess(self.identity.resolution, upscale_on_device)
        self.model.to(self.device, memory_format=torch.channels_last)
        self._scale = self._scale.to(self.device)
        self._shift = self._shift.to(self.device)
        return self

    def embed(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """uint8 NHWC batch -> {layer: float32 (N, dim) unit vectors} on the model's device.

        A sequence of batches, each of one square size, is embedded as their concatenation;
        batches smaller than the resolution are upscaled on the device first."""
        groups = [batch] if isinstance(batch, torch.Tensor) else list(batch)
        vectors = self._forward(groups)
        self.images_forwarded += sum(group.shape[0] for group in groups)
        return vectors

    @functools.cached_property
    def layer_dims(self) -> dict[str, int]:
        """Vector length per tap, probed on one blank image (not counted as embedding)."""
        side = self.identity.resolution
        blank = torch.zeros(1, side, side, 3, dtype=torch.uint8)
        return {layer: v.shape[1] for layer, v in self._forward([blank]).items()}

    def _model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC on any device -> normalised float NCHW at the resolution on the model's."""
        on_cuda = self.device.type == "cuda"
        x = batch.to(self.device, non_blocking=on_cuda).permute(0, 3, 1, 2).float()
        side = self.identity.resolution
        if x.shape[2:] != (side, side):
            # Bilinear without antialiasing: the images are only ever smaller here (larger ones
            # were fitted on the CPU), and for upscaling this is Pillow's BILINEAR.
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return x * self._scale - self._shift

    @torch.inference_mode()
    def _forward(self, groups: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        on_cuda = self.device.type == "cuda"
        inputs = [self._model_input(group) for group in groups]
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs)
        x = x.contiguous(memory_format=torch.channels_last)
        self._captured = {}
        if on_cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast(device_type="cuda", dtype=dtype):
                self.model(x)
        else:
            self.model(x)
        captured, self._captured = self._captured, {}
        return {layer: captured[layer] for layer in self.layers}


def state_dict_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resolution_for(architecture: str, typical_side: int | None = None) -> int:
    """Native size for small images (32x32 stays 32) rather than blowing them up to 224.

    Upscaling a 32 px image 7x costs 49x the compute and adds no information; ask for an explicit
    `resolution` when a pretrained model is known to do better at its training size.
    """
    if architecture == "compact":
        return COMPACT_RESOLUTION
    if typical_side is None:
        return DEFAULT_RESOLUTION
    rounded = -(-typical_side // SMALLEST_RESOLUTION) * SMALLEST_RESOLUTION
    return max(SMALLEST_RESOLUTION, min(DEFAULT_RESOLUTION, rounded))


def compact_from_state(state: dict[str, torch.Tensor]) -> CompactResNet:
    """Rebuild the compact CNN with the width and class count the checkpoint was trained with."""
    width = state["stem.0.weight"].shape[0]
    num_classes = state["classifier.weight"].shape[0]
    coarse = [
        state[f"coarse_heads.{i}.weight"].shape[0]
        for i in range(2)
        if f"coarse_heads.{i}.weight" in state
    ]
    return CompactResNet(num_classes=num_classes, width=width, coarse_classes=coarse)


def instantiate(architecture: str, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """An untrained module shaped like the checkpoint (a fine-tuned head may have few classes)."""
    if architecture == "compact":
        return CompactResNet(num_classes=10) if state is None else compact_from_state(state)
    if state is None:
        return torchvision.models.get_model(architecture, weights=None)
    head = state.get(f"{ARCHITECTURES[architecture].head}.weight")
    num_classes = head.shape[0] if head is not None else 1000
    return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)


def load_model(architecture: str, resolved: ResolvedWeights) -> tuple[nn.Module, str]:
    """The module with its weights, and the weights digest that goes into the identity."""
    if resolved.path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = instantiate(architecture, None)
        return model, state_dict_sha256(model)
    state = load_state_dict(resolved.path)
    model = instantiate(architecture, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsUnavailable(
            f"{resolved.path} does not fit {architecture}: {str(exc)[:300]}"
        ) from None
    assert resolved.sha256 is not None
    return model, resolved.sha256


def build_backbone(
    architecture: str,
    weights: str | Path | None = None,
    *,
    resolution: int | None = None,
    typical_side: int | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
) -> Backbone:
    """Build a named backbone; `weights`: a torchvision weights name, a checkpoint path, or None."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    resolved = resolve_weights(architecture, weights)
    model, weights_sha256 = load_model(architecture, resolved)
    taps = dict(ARCHITECTURES[architecture].taps)
    identity = ModelIdentity(
        architecture=architecture,
        weights=resolved.name,
        weights_sha256=weights_sha256,
        resolution=resolution or resolution_for(architecture, typical_side),
        mean=tuple(mean),
        std=tuple(std),
        taps=tuple(f"{layer}={path}" for layer, path in taps.items()),
    )
    return Backbone(model, identity, taps).to(device)


def default_backbone(
    typical_side: int | None = None, device: torch.device | str = "cpu"
) -> Backbone:
    """ResNet-18 with ImageNet weights when its file is in the torch hub cache, else compact."""
    if hub_checkpoint_path("resnet18", "IMAGENET1K_V1").is_file():
        return build_backbone("resnet18", "IMAGENET1K_V1", typical_side=typical_side, device=device)
    return build_backbone("compact", None, device=device)
