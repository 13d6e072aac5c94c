"""Ray scale-out: a local Ray instance on CPU must give the vectors the in-process path gives and
fill the same feature store, so the two paths can serve the same audits interchangeably."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

from auditor.embed.cache import FeatureStore, embed_with_cache  # noqa: E402
from auditor.embed.distributed import BackboneSpec, actor_layout, embed_with_ray  # noqa: E402
from auditor.ingest.sources import open_source  # noqa: E402

IMAGE_COUNT = 16


@pytest.fixture(scope="module")
def local_ray():
    """One small local instance for the module; starting Ray costs seconds."""
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
        yield
        ray.shutdown()


def make_images(root: Path) -> list[tuple[str, str]]:
    """Tiny noise images of mixed sizes (so resizing runs), a duplicate and one broken file."""
    rng = np.random.default_rng(7)
    items = []
    for number in range(IMAGE_COUNT):
        relative = f"class{number % 2}/img{number:02d}.png"
        side = (32, 32) if number % 3 else (40, 24)
        pixels = rng.integers(0, 256, (side[1], side[0], 3), dtype=np.uint8)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / relative)
        items.append(relative)
    (root / "class0/copy.png").write_bytes((root / items[0]).read_bytes())
    (root / "class1/broken.png").write_bytes(b"<html>not an image</html>")
    items += ["class0/copy.png", "class1/broken.png"]
    return [(hashlib.sha256((root / p).read_bytes()).hexdigest(), p) for p in items]


def test_ray_path_matches_in_process_vectors_and_fills_the_same_store(local_ray, tmp_path):
    root = tmp_path / "images"
    items = make_images(root)
    source = open_source(root)
    spec = BackboneSpec("compact")
    backbone = spec.build()

    on_ray = embed_with_ray(
        items,
        source,
        spec,
        FeatureStore(tmp_path / "ray-data", backbone.identity),
        batch_size=4,
        shard_rows=8,
        progress=False,
    )
    in_process = embed_with_cache(
        items,
        source,
        backbone,
        FeatureStore(tmp_path / "local-data", backbone.identity),
        num_workers=0,
        progress=False,
    )

    assert on_ray.embedded == in_process.embedded == IMAGE_COUNT  # the copy is embedded once
    assert on_ray.reused == 0
    assert [(f.index, f.path) for f in on_ray.failures] == [(IMAGE_COUNT + 1, "class1/broken.png")]
    assert "not an image" in on_ray.failures[0].reason
    assert list(on_ray.features) == list(backbone.layers)
    for layer, vectors in on_ray.features.items():
        np.testing.assert_allclose(vectors, in_process.features[layer], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(on_ray.features["pool"][0], on_ray.features["pool"][IMAGE_COUNT])

    backbone.images_forwarded = 0
    rerun = embed_with_cache(
        items,
        source,
        backbone,
        FeatureStore(tmp_path / "ray-data", backbone.identity),
        num_workers=0,
        progress=False,
    )
    assert backbone.images_forwarded == 0
    assert rerun.reused == IMAGE_COUNT + 1  # every decodable image, the duplicate included
    for layer, vectors in rerun.features.items():
        np.testing.assert_array_equal(vectors, on_ray.features[layer])


def test_a_store_of_another_model_is_refused_before_any_cluster_is_contacted(tmp_path):
    root = tmp_path / "images"
    items = make_images(root)
    other = BackboneSpec("compact", resolution=64).build()
    with pytest.raises(ValueError, match="different model"):
        embed_with_ray(
            items,
            open_source(root),
            BackboneSpec("compact"),
            FeatureStore(tmp_path / "data", other.identity),
            progress=False,
        )


def test_one_cnn_actor_per_gpu_and_cpu_actors_without_gpus():
    assert actor_layout({"CPU": 32.0, "GPU": 4.0}, None) == {
        "embedders": 4,
        "num_gpus": 1,
        "max_decoders": 28,
    }
    assert actor_layout({"CPU": 2.0}, None) == {"embedders": 1, "num_gpus": 0, "max_decoders": 1}
    assert actor_layout({"CPU": 8.0}, 2)["embedders"] == 2
