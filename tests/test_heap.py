"""The forward loop's heap setting: freed buffers stay in the heap while a loop runs, and go
back to the system after it. Observed through glibc's own accounting (mallinfo2), in a fresh
process, since glibc's defaults cannot be restored once a test has changed them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from auditor import heap
from auditor.embed.backbones import build_backbone
from auditor.embed.extract import extract_features
from auditor.ingest.sources import open_source
from auditor.predict import LAYER_TAPS, TrainConfig
from auditor.predict.cnn import layer_features, predict_probabilities, train_cnn

pytestmark = pytest.mark.skipif(not heap.supported(), reason="glibc only")

OBSERVE = """
import ctypes, json
import numpy as np
from auditor.heap import retained_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mapped_by_a_large_buffer():
    before = libc.mallinfo2().hblks
    buffer = np.ones(64 * 2**20, np.uint8)
    mapped = libc.mallinfo2().hblks - before
    del buffer
    return mapped

seen = {"default": mapped_by_a_large_buffer()}
with retained_heap():
    with retained_heap():
        pass
    seen["retained, after a nested user left"] = mapped_by_a_large_buffer()
    seen["heap kept"] = libc.mallinfo2().arena
seen["released"] = mapped_by_a_large_buffer()
seen["heap after release"] = libc.mallinfo2().arena
print(json.dumps(seen))
"""


def test_buffers_stay_in_the_heap_while_retained_and_go_back_after():
    root = Path(__file__).resolve().parents[1]
    output = subprocess.run(
        [sys.executable, "-c", OBSERVE], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    seen = json.loads(output.strip().splitlines()[-1])
    assert seen["default"] == 1  # glibc maps a 64 MiB buffer of its own
    assert seen["retained, after a nested user left"] == 0  # from the heap instead
    assert seen["heap kept"] >= 64 * 2**20  # and the heap keeps it once freed
    assert seen["released"] == 1
    assert seen["heap after release"] < 64 * 2**20  # trimmed back


def test_the_embedding_loop_runs_every_forward_in_the_retained_heap(tmp_path: Path):
    rng = np.random.default_rng(0)
    items = []
    for index in range(5):
        path = tmp_path / "images" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        items.append((hashlib.sha256(path.read_bytes()).hexdigest(), path.name))
    backbone = build_backbone("compact", None)
    forward = backbone.embed
    retained_at_each_forward = []

    def observed_embed(batch):
        retained_at_each_forward.append(heap.is_retained())
        return forward(batch)

    backbone.embed = observed_embed
    extraction = extract_features(
        items, open_source(tmp_path / "images"), backbone, batch_size=2, progress=False
    )
    assert not extraction.failures
    assert retained_at_each_forward == [True, True, True]
    assert not heap.is_retained()


def test_held_out_inference_runs_in_the_retained_heap():
    digits = load_digits()
    images = np.repeat((digits.images[:120] * 16).astype(np.uint8)[..., None], 3, axis=3)
    retained_per_forward = []
    trained = train_cnn(
        images,
        digits.target[:120].astype(np.int64),
        10,
        config=TrainConfig(epochs=1, width=16, batch_size=64),
        on_epoch=lambda _share: None,
    )
    trained.model.register_forward_pre_hook(
        lambda _module, _inputs: retained_per_forward.append(heap.is_retained())
    )
    probabilities = predict_probabilities(trained, images)
    features = layer_features(trained, images)
    assert probabilities.shape == (120, 10) and set(features) == set(LAYER_TAPS)
    assert len(retained_per_forward) >= 2 and all(retained_per_forward)  # both passes
    assert not heap.is_retained()
