"""The procedural:shapes generator: determinism, seeds, sizes, understood words, the factory."""

from __future__ import annotations

import numpy as np
import pytest

from inference.protocols import ImageGenerator, RenderJob, RenderSettings
from inference.registry import BackendSpecError, GeneratorOptions, load_generator, load_target
from toyworld.controls import random_toy_scene_prompts
from toyworld.procedural import (
    ProceduralShapesGenerator,
    create_procedural_generator,
    render_prompt,
)
from toyworld.scenes import compose_scene
from toyworld.truth import planted_ground_truth
from toyworld.vocabulary import parse_scene_text


def _pixels(prompt: str, seed: int, width: int = 224, height: int = 224) -> np.ndarray:
    return np.asarray(render_prompt(prompt, seed, width, height).image)


def test_same_prompt_and_seed_give_identical_pixels() -> None:
    for prompt in ("three striped blue triangles", "a photo", "many small dotted objects"):
        assert np.array_equal(_pixels(prompt, 7), _pixels(prompt, 7))


def test_batch_render_matches_single_renders() -> None:
    generator = ProceduralShapesGenerator()
    settings = generator.default_settings()
    jobs = [RenderJob("a red circle", s, settings) for s in range(3)]
    jobs.append(RenderJob("a green star", 0, RenderSettings(96, 64, 1, 0.0)))
    batch = generator.render(jobs)
    for job, rendered in zip(jobs, batch, strict=True):
        single = generator.render([job])[0]
        assert np.array_equal(np.asarray(rendered.image), np.asarray(single.image))
    assert batch[-1].image.size == (96, 64)


def test_five_seeds_give_five_different_images() -> None:
    images = [_pixels("a dotted heart", seed) for seed in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not np.array_equal(images[i], images[j])


def test_images_have_the_requested_size_and_mode() -> None:
    for width, height in ((224, 224), (64, 48), (320, 200), (17, 300)):
        image = render_prompt("a blue square", 1, width, height).image
        assert image.size == (width, height) and image.mode == "RGB"
    with pytest.raises(ValueError, match="out of range"):
        render_prompt("a blue square", 1, 4, 4)


def test_seed_varies_layout_but_a_word_changes_only_its_attribute() -> None:
    red = compose_scene(parse_scene_text("a red circle"), 11)
    blue = compose_scene(parse_scene_text("a blue circle"), 11)
    main_red = [o for o in red.objects if not o.distractor]
    main_blue = [o for o in blue.objects if not o.distractor]
    assert [o.colour for o in main_red] == ["red"] and [o.colour for o in main_blue] == ["blue"]
    assert (main_red[0].x, main_red[0].y, main_red[0].radius) == (
        main_blue[0].x,
        main_blue[0].y,
        main_blue[0].radius,
    )
    other = compose_scene(parse_scene_text("a red circle"), 12)
    assert (other.objects[0].x, other.objects[0].y) != (red.objects[0].x, red.objects[0].y)


def test_scene_follows_the_text() -> None:
    for seed in range(6):
        scene = compose_scene(parse_scene_text("three large striped green hexagons"), seed)
        main = [o for o in scene.objects if not o.distractor]
        assert len(main) == 3
        assert {(o.colour, o.texture, o.shape) for o in main} == {("green", "striped", "hexagon")}
        many = compose_scene(parse_scene_text("many small objects"), seed)
        assert sum(not o.distractor for o in many.objects) >= 8
        assert all(o.radius < 0.1 for o in many.objects)
        white = compose_scene(parse_scene_text("a star on a white background"), seed)
        assert white.background == "white"


def test_unspecified_attributes_are_sampled_from_the_seed() -> None:
    colours = set()
    textures = set()
    for seed in range(30):
        (circle,) = [
            o for o in compose_scene(parse_scene_text("a circle"), seed).objects if not o.distractor
        ]
        assert circle.shape == "circle"
        colours.add(circle.colour)
        textures.add(circle.texture)
    assert len(colours) >= 6 and len(textures) == 4


def test_understood_words_are_returned_and_unknown_prompts_render_distractors() -> None:
    rendered = render_prompt("a realistic photo of crimson polka dots, aerial view", 0)
    assert rendered.understood == ["crimson", "polka dots"]
    nothing = render_prompt("a realistic photo of a cat", 3)
    assert nothing.understood == []
    assert nothing.extra["objects"] == [] and nothing.extra["distractors"] >= 2
    assert np.asarray(nothing.image).std() > 5  # not a blank image


def test_random_toy_scene_prompts_are_fixed_and_distinct() -> None:
    scenes = random_toy_scene_prompts(50, seed=0)
    assert scenes == random_toy_scene_prompts(50, seed=0)
    assert scenes != random_toy_scene_prompts(50, seed=1)
    assert len({seed for _, seed in scenes}) == 50
    assert all(parse_scene_text(prompt).is_empty for prompt, _ in scenes)


def test_factory_registry_and_protocol() -> None:
    generator = load_generator("procedural:shapes", device="cpu")
    assert isinstance(generator, ImageGenerator)
    assert generator.name == "procedural:shapes"
    assert generator.identity.startswith("procedural:shapes@")
    assert generator.default_settings() == RenderSettings(224, 224, 1, 0.0)
    sized = create_procedural_generator("shapes", "cpu", GeneratorOptions(width=128, height=96))
    assert sized.default_settings() == RenderSettings(128, 96, 1, 0.0)
    with pytest.raises(BackendSpecError, match="procedural:shapes"):
        create_procedural_generator("blobs", "cpu", GeneratorOptions())


def test_the_faded_setting_is_a_second_weaker_generator() -> None:
    plain = load_generator("procedural:shapes", device="cpu")
    faded = load_generator("procedural:shapes:faded", device="cpu")
    assert (faded.name, faded.identity) == ("procedural:shapes:faded", "procedural:shapes:faded@v1")
    assert plain.identity == "procedural:shapes@v1"  # the plain renderer's image ids stay put
    settings = plain.default_settings()
    jobs = [RenderJob("a red circle", seed, settings) for seed in range(5)]
    plain_images, faded_images = plain.render(jobs), faded.render(jobs)
    assert [i.extra for i in plain_images] == [i.extra for i in faded_images]  # same scenes
    red = next(u.unit for u in planted_ground_truth() if u.concept == "red")
    target = load_target("planted:shapes", "cpu")
    read = [target.activations([i.image for i in images], "planted")[:, red].mean()
            for images in (plain_images, faded_images)]  # fmt: skip
    assert read[0] == 1.0 and read[1] < 0.5
    with pytest.raises(BackendSpecError, match="'procedural:shapes:faded'"):
        create_procedural_generator("shapes:blurry", "cpu", GeneratorOptions())
