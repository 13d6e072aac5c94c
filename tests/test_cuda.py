"""The CUDA path: training, prediction, patch encoding and embedding on a GPU agree with the CPU.

Skipped where torch sees no GPU (CI has none); run on a GPU machine with
`pytest --noconftest tests/test_cuda.py` (these tests need no database).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.embed.backbones import build_backbone
from auditor.embed.cache import FeatureStore, embed_with_cache
from auditor.ingest.sources import open_source
from auditor.predict import TrainConfig, out_of_sample_probabilities
from auditor.predict.cnn import layer_features, predict_probabilities, train_cnn
from auditor.predict.patch_features import patch_features
from tests.test_predict import digit_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cnn_trains_on_the_gpu_as_well_as_on_the_cpu():
    images, labels = digit_images(1000)
    config = TrainConfig(epochs=6, width=16, batch_size=64)
    train, test = np.arange(800), np.arange(800, 1000)
    accuracy = {}
    for device in ("cpu", "cuda"):
        net = train_cnn(images[train], labels[train], 10, config=config, seed=0, device=device)
        assert net.device.type == device
        probabilities = predict_probabilities(net, images[test])
        assert probabilities.dtype == np.float64
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
        accuracy[device] = (probabilities.argmax(1) == labels[test]).mean()
        taps = layer_features(net, images[test])
        for values in taps.values():
            assert values.dtype == np.float32 and len(values) == len(test)
            np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, atol=1e-3)
    assert accuracy["cuda"] > 0.7
    assert abs(accuracy["cuda"] - accuracy["cpu"]) < 0.1


def test_patch_features_match_the_cpu():
    images, _ = digit_images(200)
    on_cpu = patch_features(images, centroids=32)
    on_gpu = patch_features(images, centroids=32, device="cuda")
    correlation = np.corrcoef(on_cpu.ravel(), on_gpu.ravel())[0, 1]
    assert correlation > 0.999


def test_out_of_sample_strategies_run_on_the_gpu():
    images, labels = digit_images(600)
    short = TrainConfig(epochs=8, width=16, batch_size=64)
    for strategy in ("cnn_kfold", "patch_cnn"):
        result = out_of_sample_probabilities(
            strategy,
            images=images,
            labels=labels,
            n_classes=10,
            folds=3,
            train_config=short,
            device="cuda",
        )
        assert result.probabilities.shape == (600, 10)
        assert (result.probabilities.argmax(1) == labels).mean() > 0.5


@pytest.mark.parametrize("architecture", ["compact", "resnet18"])
def test_embedding_on_the_gpu_matches_the_cpu(architecture, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images" / "noise").mkdir(parents=True)
    for index in range(40):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / "noise" / f"{index:03d}.png")
    source = open_source(tmp_path / "images")
    items = [
        (hashlib.sha256(source.read_bytes(entry.path)).hexdigest(), entry.path)
        for entry in source.entries()
    ]
    vectors = {}
    for device, workers in (("cpu", 0), ("cuda", 2)):
        backbone = build_backbone(architecture, None, resolution=64, device=device)
        assert backbone.preprocess.upscale_on_device == (device == "cuda")  # 32 px sources
        store = FeatureStore(tmp_path / f"store-{device}", backbone.identity)
        result = embed_with_cache(
            items, source, backbone, store, batch_size=16, num_workers=workers, progress=False
        )
        assert result.embedded == len(items) and not result.failures
        assert len(result.features["pool"]) == len(items) == 40
        vectors[device] = result.features["pool"]
    cosine = (vectors["cpu"] * vectors["cuda"]).sum(1)
    assert cosine.min() > 0.98
