"""The diffusers generator path, through the offline tiny-sd pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from inference.protocols import RenderJob, RenderSettings
from inference.registry import BackendSpecError, GeneratorOptions, load_generator


def jobs(settings: RenderSettings, count: int = 4) -> list[RenderJob]:
    prompts = ["a red apple", "a blue car", "a dog on grass", "a striped cat", "a tree"]
    return [RenderJob(prompts[i % len(prompts)], 100 + i, settings) for i in range(count)]


def test_tiny_sd_is_built_offline_into_the_cache(tiny_sd, line_cache):
    assert (line_cache / "tiny-sd-v1" / "model_index.json").is_file()
    settings = tiny_sd.default_settings()
    assert (settings.width, settings.height, settings.steps, settings.guidance) == (64, 64, 1, 0.0)
    image = tiny_sd.render(jobs(settings, 1))[0].image
    assert image.size == (64, 64) and image.mode == "RGB"


def test_an_image_rendered_in_a_batch_equals_it_rendered_alone(tiny_sd):
    settings = tiny_sd.default_settings()
    batch = tiny_sd.render_pixels(jobs(settings, 4)).numpy().astype(int)
    for index, job in enumerate(jobs(settings, 4)):
        alone = tiny_sd.render_pixels([job])[0].numpy().astype(int)
        assert np.abs(batch[index] - alone).max() <= 1  # float noise may cross a rounding edge


def test_same_job_same_pixels_and_seeds_matter(tiny_sd):
    settings = tiny_sd.default_settings()
    first = tiny_sd.render_pixels([RenderJob("a red apple", 7, settings)])[0].numpy()
    again = tiny_sd.render_pixels([RenderJob("a red apple", 7, settings)])[0].numpy()
    other_seed = tiny_sd.render_pixels([RenderJob("a red apple", 8, settings)])[0].numpy()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other_seed).max() > 2


def test_a_batch_must_share_settings(tiny_sd):
    a = RenderSettings(64, 64, 1, 0.0)
    b = RenderSettings(64, 64, 2, 0.0)
    with pytest.raises(ValueError, match="share width, height, steps and guidance"):
        tiny_sd.render_pixels([RenderJob("x", 1, a), RenderJob("y", 2, b)])


def test_generator_options_change_defaults_and_identity(line_cache):
    generator = load_generator("tiny-sd", "cpu", GeneratorOptions(steps=2, width=32, height=48))
    settings = generator.default_settings()
    assert (settings.width, settings.height, settings.steps) == (32, 48, 2)
    assert generator.render(jobs(settings, 1))[0].image.size == (32, 48)


def test_bad_generator_specs_say_what_to_use(tmp_path):
    with pytest.raises(BackendSpecError, match="unknown dtype 'float8'"):
        load_generator("tiny-sd", "cpu", GeneratorOptions(dtype="float8"))
    with pytest.raises(BackendSpecError, match="takes no arguments"):
        load_generator("tiny-sd:big", "cpu")
    with pytest.raises(BackendSpecError, match="could not load the diffusers pipeline"):
        load_generator(str(tmp_path / "no-such-pipeline"), "cpu")
