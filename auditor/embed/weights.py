"""Where a backbone's weights come from: the local torch hub cache, a checkpoint file, or nowhere.

Nothing is ever downloaded here. Audits run on machines without network and in tests, and a download
in the middle of a job would stall it for minutes; so a missing file is an error that says exactly
which file to put where, or which alternative to use instead.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from auditor.config import Settings

RANDOM_WEIGHTS = "none"
RANDOM_ALIASES = {"", "none", "random"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class WeightsUnavailable(FileNotFoundError):
    """The requested weights are not on this machine; the message lists the ways forward."""


@dataclass(frozen=True)
class ResolvedWeights:
    """What to load: `path` is None for random initialisation."""

    name: str
    path: Path | None
    sha256: str | None


def is_offline() -> bool:
    """Read AUDITOR_OFFLINE now, not from the cached settings, so a changed environment counts."""
    return Settings().offline


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def looks_like_path(weights: str) -> bool:
    return "/" in weights or os.sep in weights or weights.lower().endswith(CHECKPOINT_SUFFIXES)


def torchvision_weights_enum(architecture: str, name: str) -> torchvision.models.WeightsEnum:
    """The torchvision enum member for `name` (e.g. IMAGENET1K_V1 or DEFAULT)."""
    enum = torchvision.models.get_model_weights(architecture)
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        known = ", ".join(member.name for member in enum)
        raise WeightsUnavailable(
            f"unknown weights {name!r} for {architecture}; torchvision knows: {known}, "
            "or pass a checkpoint file path, or weights=none"
        ) from None


def hub_checkpoint_path(architecture: str, name: str) -> Path:
    """Where torch.hub would have saved these weights: <hub dir>/checkpoints/<file name in the url>."""
    url = torchvision_weights_enum(architecture, name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def missing_weights_message(architecture: str, name: str, expected: Path) -> str:
    url = torchvision_weights_enum(architecture, name).url
    if is_offline():
        reason = "AUDITOR_OFFLINE=1, so weights are never downloaded"
    else:
        reason = f"the auditor never downloads weights; fetch {url} beforehand"
    return (
        f"weights {architecture}/{name} not found: expected the file {expected} ({reason}). "
        f"Either put that file there, pass a local checkpoint path as weights, "
        f"or use weights=none (random initialisation) or the 'compact' CNN trained on the data."
    )


def resolve_weights(architecture: str, weights: str | Path | None) -> ResolvedWeights:
    """Find the weights file for `weights`: a torchvision weights name, a file path, or none."""
    if weights is None or str(weights).strip().lower() in RANDOM_ALIASES:
        return ResolvedWeights(name=RANDOM_WEIGHTS, path=None, sha256=None)
    if isinstance(weights, Path) or looks_like_path(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"checkpoint file {path} not found; pass an existing file, a torchvision weights "
                "name found in the torch hub cache, or weights=none"
            )
        return ResolvedWeights(name=path.name, path=path, sha256=file_sha256(path))
    if architecture == "compact":
        raise WeightsUnavailable(
            f"the compact CNN has no named weights ({weights!r}); pass the path of a checkpoint "
            "trained on the data, or weights=none"
        )
    expected = hub_checkpoint_path(architecture, weights)
    if not expected.is_file():
        raise WeightsUnavailable(missing_weights_message(architecture, weights, expected))
    return ResolvedWeights(name=weights, path=expected, sha256=file_sha256(expected))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only (weights_only), unwrapping the usual {'state_dict': ...} or {'model': ...}."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise WeightsUnavailable(f"{path} does not hold a state dict")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}
