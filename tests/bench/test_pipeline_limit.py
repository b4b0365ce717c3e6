"""The benchmark's pipeline limit does the server's work: render, quantise, measure."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.pipeline import pipeline_limit, render_and_measure
from inference.protocols import RenderJob
from inference.store import ImageStore


def test_a_pipeline_step_measures_what_the_stored_pngs_measure(tiny_sd, resnet18):
    jobs = [RenderJob(f"pipeline probe {i}", i, tiny_sd.default_settings()) for i in range(2)]
    values, rendering, measuring = render_and_measure(tiny_sd, resnet18, "layer4", jobs)
    stored = [
        Image.open(io.BytesIO(ImageStore.encode_png(rendered.image, {})))
        for rendered in tiny_sd.render(jobs)
    ]
    np.testing.assert_allclose(values, resnet18.activations(stored, "layer4"), atol=1e-5)
    assert values.shape == (2, 512)
    assert rendering > 0 and measuring > 0


def test_the_limit_counts_every_image_and_splits_its_time(tiny_sd, resnet18):
    limit = pipeline_limit(tiny_sd, resnet18, "layer4", batch=1, min_seconds=0, min_calls=2)
    assert limit.images == 2 and limit.batch == 1
    assert limit.generator_seconds + limit.target_seconds <= limit.seconds
    figures = limit.as_dict()
    assert figures["images_per_s"] == limit.images / limit.seconds
    assert 0 < figures["generator_share"] < 1 and 0 < figures["target_share"] < 1
