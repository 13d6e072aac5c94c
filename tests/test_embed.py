"""Embedding stage: backbones and taps, extraction, the content-addressed feature cache, weights.

Real forward passes on tiny generated images with random weights; no network, no mocks.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.embed.backbones import (
    ARCHITECTURES,
    build_backbone,
    default_backbone,
)
from auditor.embed.cache import FeatureStore, embed_with_cache
from auditor.embed.compact import CompactResNet
from auditor.embed.extract import extract_features
from auditor.embed.weights import WeightsUnavailable, file_sha256, hub_checkpoint_path
from auditor.ingest.sources import Source, open_source


def write_image(root: Path, relative: str, seed: int, size: tuple[int, int] = (32, 32)) -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return relative


def item(root: Path, relative: str) -> tuple[str, str]:
    return hashlib.sha256((root / relative).read_bytes()).hexdigest(), relative


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Source, Path, list[tuple[str, str]]]:
    root = tmp_path / "images"
    paths = [
        write_image(root, "cat/a.png", 1),
        write_image(root, "cat/b.png", 2, size=(24, 40)),
        write_image(root, "dog/c.png", 3, size=(48, 16)),
    ]
    return open_source(root), root, [item(root, p) for p in paths]


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, so a real one on the machine cannot change the outcome."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("AUDITOR_OFFLINE", raising=False)
    return Path(torch.hub.get_dir())


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_backbone_embeds_unit_vectors_per_tap(architecture, dataset, tmp_path):
    source, root, items = dataset
    (root / "dog" / "broken.png").write_bytes(b"<html>not an image</html>")
    items = [*items, item(root, "dog/broken.png")]
    resolution = None if architecture == "compact" else 64
    backbone = build_backbone(architecture, None, resolution=resolution)

    result = extract_features(items, source, backbone, batch_size=2, progress=False)

    assert backbone.layers[0] == "stem" and backbone.layers[-1] == "pool"
    assert list(result.features) == list(backbone.layers)
    assert backbone.images_forwarded == 3
    for layer, vectors in result.features.items():
        assert vectors.dtype == np.float32
        assert vectors.shape == (4, backbone.layer_dims[layer])
        np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, atol=1e-4)
        assert not vectors[3].any()
    assert [(f.index, f.path) for f in result.failures] == [(3, "dog/broken.png")]
    assert "not an image" in result.failures[0].reason


def test_compact_runs_at_native_resolution_and_identity_is_stable():
    first, second = build_backbone("compact"), build_backbone("compact")
    assert first.identity.resolution == 32
    assert first.identity.key == second.identity.key
    assert build_backbone("compact", resolution=64).identity.key != first.identity.key
    assert build_backbone("resnet18", typical_side=32).identity.resolution == 32
    assert build_backbone("resnet18").identity.resolution == 224


def test_rerun_embeds_nothing_and_returns_identical_vectors(dataset, tmp_path):
    source, _, items = dataset
    backbone = build_backbone("compact")
    first = embed_with_cache(
        items, source, backbone, FeatureStore(tmp_path / "data", backbone.identity), progress=False
    )
    assert backbone.images_forwarded == 3 and first.embedded == 3

    # A new store object reads what the first one wrote, as a later process would.
    backbone.images_forwarded = 0
    again = embed_with_cache(
        items, source, backbone, FeatureStore(tmp_path / "data", backbone.identity), progress=False
    )
    assert backbone.images_forwarded == 0
    assert (again.embedded, again.reused) == (0, 3)
    for layer in backbone.layers:
        np.testing.assert_array_equal(again.features[layer], first.features[layer])


def test_only_new_images_embedded_and_duplicates_once(dataset, tmp_path):
    source, root, items = dataset
    backbone = build_backbone("compact")
    store = FeatureStore(tmp_path / "data", backbone.identity)
    embed_with_cache(items, source, backbone, store, progress=False)

    copy = root / "dog" / "copy-of-a.png"
    copy.write_bytes((root / "cat" / "a.png").read_bytes())
    new = [item(root, write_image(root, "dog/new.png", 9)) for _ in range(2)]
    more = [*items, item(root, "dog/copy-of-a.png"), *new]
    backbone.images_forwarded = 0
    result = embed_with_cache(
        more, source, backbone, store, layers=["pool"], num_workers=1, progress=False
    )

    assert backbone.images_forwarded == 1
    assert list(result.features) == ["pool"]
    pool = result.features["pool"]
    np.testing.assert_array_equal(pool[3], pool[0])
    np.testing.assert_array_equal(pool[4], pool[5])


def test_torn_or_corrupt_shard_is_detected_and_rebuilt(dataset, tmp_path):
    source, _, items = dataset
    backbone = build_backbone("compact")
    original = embed_with_cache(
        items, source, backbone, FeatureStore(tmp_path / "data", backbone.identity), progress=False
    )
    layer_dir = tmp_path / "data" / "features" / backbone.identity.key / "stage2"
    (array_file,) = layer_dir.glob("*.npy")

    with array_file.open("r+b") as handle:
        handle.truncate(array_file.stat().st_size - 100)
    backbone.images_forwarded = 0
    rebuilt = embed_with_cache(
        items, source, backbone, FeatureStore(tmp_path / "data", backbone.identity), progress=False
    )
    assert backbone.images_forwarded == 3
    np.testing.assert_allclose(rebuilt.features["stage2"], original.features["stage2"], atol=1e-6)

    # Same length, one flipped byte: only the checksum can tell.
    (array_file,) = layer_dir.glob("*.npy")
    data = bytearray(array_file.read_bytes())
    data[-1] ^= 0xFF
    array_file.write_bytes(bytes(data))
    backbone.images_forwarded = 0
    embed_with_cache(
        items, source, backbone, FeatureStore(tmp_path / "data", backbone.identity), progress=False
    )
    assert backbone.images_forwarded == 3


def test_shard_without_manifest_counts_as_missing(dataset, tmp_path):
    source, _, items = dataset
    backbone = build_backbone("compact")
    embed_with_cache(
        items, source, backbone, FeatureStore(tmp_path / "data", backbone.identity), progress=False
    )
    root = tmp_path / "data" / "features" / backbone.identity.key
    (manifest,) = (root / "_manifests").glob("*.json")
    assert json.loads(manifest.read_text())["rows"] == 3
    manifest.unlink()  # what a crash before the last write leaves behind

    backbone.images_forwarded = 0
    embed_with_cache(
        items, source, backbone, FeatureStore(tmp_path / "data", backbone.identity), progress=False
    )
    assert backbone.images_forwarded == 3


def test_changed_file_is_reported_not_stored_under_the_old_hash(dataset, tmp_path):
    source, root, items = dataset
    write_image(root, "cat/a.png", 99)
    backbone = build_backbone("compact")
    store = FeatureStore(tmp_path / "data", backbone.identity)
    result = embed_with_cache(items, source, backbone, store, progress=False)
    assert [f.index for f in result.failures] == [0]
    assert "changed since ingest" in result.failures[0].reason
    assert not store.contains([items[0][0]], backbone.layers).any()


def test_missing_weights_error_names_the_expected_file(hub_dir, monkeypatch):
    expected = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_checkpoint_path("resnet18", "IMAGENET1K_V1") == expected
    with pytest.raises(WeightsUnavailable) as error:
        build_backbone("resnet18", "IMAGENET1K_V1")
    message = str(error.value)
    assert str(expected) in message
    assert "weights=none" in message and "checkpoint" in message and "compact" in message
    assert "download.pytorch.org" in message  # where to fetch it by hand

    monkeypatch.setenv("AUDITOR_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="AUDITOR_OFFLINE=1") as error:
        build_backbone("resnet18", "IMAGENET1K_V1")
    assert str(expected) in str(error.value)
    assert not expected.exists()


def test_weights_found_in_hub_cache_are_used_offline(hub_dir, monkeypatch):
    assert default_backbone().identity.architecture == "compact"
    expected = hub_checkpoint_path("resnet18", "IMAGENET1K_V1")
    expected.parent.mkdir(parents=True)
    torch.save(build_backbone("resnet18").model.state_dict(), expected)
    monkeypatch.setenv("AUDITOR_OFFLINE", "1")

    backbone = default_backbone(typical_side=32)
    assert backbone.identity.architecture == "resnet18"
    assert backbone.identity.weights == "IMAGENET1K_V1"
    assert backbone.identity.weights_sha256 == file_sha256(expected)
    assert backbone.identity.resolution == 32


def test_checkpoint_file_shapes_the_model(tmp_path):
    checkpoint = tmp_path / "compact-trained.pt"
    torch.save({"state_dict": CompactResNet(num_classes=5, width=8).state_dict()}, checkpoint)
    backbone = build_backbone("compact", checkpoint)
    assert backbone.layer_dims["pool"] == 32
    assert backbone.identity.weights_sha256 == file_sha256(checkpoint)
    with pytest.raises(WeightsUnavailable, match="not found"):
        build_backbone("compact", tmp_path / "missing.pt")


def test_workers_read_a_zip_each_through_their_own_handle(tmp_path):
    """Forked workers sharing the parent's zip descriptor read each other's bytes (bad CRC)."""
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
        for index in range(24):
            buffer = io.BytesIO()
            pixels = np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, format="PNG")
            bundle.writestr(f"cls/{index:02d}.png", buffer.getvalue())
    source = open_source(archive)
    paths = [entry.path for entry in source.entries()]
    items = [(hashlib.sha256(source.read_bytes(p)).hexdigest(), p) for p in paths]

    backbone = build_backbone("compact")
    result = extract_features(items, source, backbone, batch_size=2, num_workers=2, progress=False)
    assert result.failures == []
    assert backbone.images_forwarded == 24


def test_in_process_prefetch_matches_worker_processes(dataset, tmp_path):
    """The background-thread loader keeps item order and reports a broken file at its place."""
    source, root, items = dataset
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    items = [items[0], item(root, "dog/broken.png"), *items[1:]]
    backbone = build_backbone("compact")
    threaded = extract_features(
        items, source, backbone, batch_size=2, num_workers=0, progress=False
    )
    forked = extract_features(items, source, backbone, batch_size=2, num_workers=1, progress=False)
    assert [f.index for f in threaded.failures] == [1]
    assert "corrupt" in threaded.failures[0].reason or "not an image" in threaded.failures[0].reason
    for layer, rows in threaded.features.items():
        np.testing.assert_allclose(rows, forked.features[layer], atol=1e-5)
    assert np.abs(threaded.features["pool"][[0, 2, 3]]).sum(axis=1).min() > 0
    assert backbone.images_forwarded == 6


def test_small_images_upscaled_on_the_device_match_resizing_on_the_cpu(dataset):
    """What a GPU does by default, run on the CPU: images below the resolution travel at their
    own size (several sizes in one batch) and are upscaled after the copy, giving the vectors of
    resizing them first, in item order."""
    source, root, items = dataset
    large = write_image(root, "dog/large.png", 4, size=(120, 100))
    jpeg = root / "cat/plain.jpg"
    Image.open(root / "cat/a.png").save(jpeg, quality=90)
    items = [*items, item(root, large), item(root, "cat/plain.jpg")]
    on_cpu = build_backbone("resnet18", resolution=64)
    on_device = build_backbone("resnet18", resolution=64).to("cpu", upscale_on_device=True)

    assert tuple(on_device.preprocess.from_bytes(jpeg.read_bytes(), 10_000).shape) == (32, 32, 3)
    assert tuple(on_cpu.preprocess.from_bytes(jpeg.read_bytes(), 10_000).shape) == (64, 64, 3)
    resized = extract_features(items, source, on_cpu, batch_size=8, progress=False)
    upscaled = extract_features(items, source, on_device, batch_size=8, progress=False)

    assert upscaled.failures == [] and on_device.images_forwarded == len(items)
    for layer in ("stage1", "pool"):
        similarity = upscaled.features[layer] @ resized.features[layer].T
        assert np.diag(similarity).min() > 0.9995, layer
        assert (similarity.argmax(axis=1) == np.arange(len(items))).all(), layer
