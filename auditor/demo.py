"""The demo dataset: sklearn's handwritten digits, scaled up, with known problems planted.

It lets a newcomer see the tool work end to end with nothing downloaded, and lets us compare what
the audit finds with what was planted.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass
class PlantedProblems:
    """What the demo builder broke on purpose, by path relative to the dataset root."""

    mislabeled: dict[str, dict[str, str]] = field(default_factory=dict)
    exact_duplicates: list[list[str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def digit_image(pixels: np.ndarray, side: int) -> Image.Image:
    gray = (pixels.reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((side, side), Image.BILINEAR).convert("RGB")


def build_demo_dataset(
    root: Path, *, per_class: int = 60, mislabel_rate: float = 0.05, side: int = 32, seed: int = 0
) -> PlantedProblems:
    """Write an ImageFolder tree under `root` (replacing it) and `planted.json` beside it."""
    if root.exists():
        shutil.rmtree(root)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    planted = PlantedProblems()
    written: list[str] = []
    for digit, name in enumerate(CLASS_NAMES):
        members = np.flatnonzero(digits.target == digit)[:per_class]
        for index in members:
            label = name
            if rng.random() < mislabel_rate:
                label = CLASS_NAMES[rng.choice([d for d in range(10) if d != digit])]
            relative = f"{label}/digit_{index:04d}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            digit_image(digits.data[index], side).save(root / relative)
            written.append(relative)
            if label != name:
                planted.mislabeled[relative] = {"given": label, "true": name}
    for original in rng.choice(written, size=5, replace=False):
        copy = original.replace(".png", "_copy.png")
        shutil.copyfile(root / original, root / copy)
        planted.exact_duplicates.append([str(original), copy])
    broken = f"{CLASS_NAMES[0]}/broken_upload.png"
    (root / broken).write_bytes(b"\x89PNG\r\n\x1a\n truncated upload")
    planted.unreadable.append(broken)
    (root.parent / f"{root.name}-planted.json").write_text(json.dumps(asdict(planted), indent=2))
    return planted
