"""Layers with positions: SAE latents (and directions, and raw units) at every position of a ViT's
tokens and a CNN's map, aggregated per image by a rule, equal a loop over the positions; the
server computes them next to the model and caches one vector per image; bad rules are refused
in words."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import VisionTransformer
from torchvision.transforms import v2

from inference.app import create_app, start_server_thread
from inference.bases import BasisRegistry, UnitBasis, directions_basis, sae_basis, unit_space
from inference.positions import (
    MAP,
    TOKENS,
    LayerReading,
    PositionsError,
    default_rule,
    split_positions,
    with_positions,
)
from inference.registry import load_generator, load_target
from inference.service import open_service, target_identity
from inference.targets.torch_target import IMAGENET_MEAN, IMAGENET_STD, TorchTarget
from inference.wire import RenderOptions
from tools.client import LineClient, LineServerError
from tools.server_session import RunSetupError, check_layer_units

VIT_WIDTH = 24
CONV4 = 128  # learned:shapes's conv4: 128 channels on an 8 x 8 map
D_SAE = 40
RULES = ("cls", "mean", "max", "patch-mean", "patch-max")


def _sae(d_in: int, seed: int, config: dict) -> UnitBasis:
    rng = np.random.default_rng(seed)
    tensors = {
        "W_enc": rng.normal(0, 1 / np.sqrt(d_in), (d_in, D_SAE)).astype(np.float32),
        "b_enc": rng.normal(0, 0.1, D_SAE).astype(np.float32),
        "b_dec": rng.normal(0, 0.1, d_in).astype(np.float32),
        "W_dec": rng.normal(0, 0.4, (D_SAE, d_in)).astype(np.float32),
    }
    return sae_basis(tensors, config, f"sae:test-{seed}")


def _directions(d_in: int, seed: int) -> UnitBasis:
    rng = np.random.default_rng(seed)
    rows = rng.normal(0, 1, (5, d_in)).astype(np.float32)
    return directions_basis(rows, rng.normal(0, 0.2, d_in).astype(np.float32), "directions:x")


def _bases(d_in: int) -> dict[str, UnitBasis]:
    return {
        "topk-rescaled": _sae(d_in, 1, {"architecture": "topk", "k": 5,
                                        "rescale_acts_by_decoder_norm": True}),
        "layer-normed": _sae(d_in, 2, {"normalize_activations": "layer_norm"}),
        "directions": _directions(d_in, 3),
    }  # fmt: skip


@pytest.fixture(scope="module")
def tiny_vit() -> TorchTarget:
    """A 2-layer ViT on 32 x 32 images: 16 patch tokens and a class token, 24 wide."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=VIT_WIDTH,
            mlp_dim=48, num_classes=10,
        )  # fmt: skip
    preprocess = v2.Compose(
        [
            v2.Resize(32, antialias=True),
            v2.CenterCrop(32),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return TorchTarget("tiny-vit", module, None, "cpu", pixel_preprocess=preprocess)


@pytest.fixture(scope="module")
def learned() -> TorchTarget:
    target = load_target("learned:shapes", "cpu")
    assert isinstance(target, TorchTarget)
    return target


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]


def _layer_output(target: TorchTarget, layer: str, images: list[Image.Image]) -> np.ndarray:
    """The layer's whole output, captured by a hook of the test's own."""
    captured = {}
    module = target.module.get_submodule(layer)
    handle = module.register_forward_hook(lambda _m, _i, out: captured.update(out=out))
    try:
        target.activations(images, layer)
    finally:
        handle.remove()
    return captured["out"].detach().float().numpy()


def _one_at_a_time(output: np.ndarray, basis: UnitBasis | None) -> np.ndarray:
    """``[images, positions, units]``: every position's vector encoded on its own."""
    rows = []
    for image in output:
        vectors = image.reshape(image.shape[0], -1).T if image.ndim == 3 else image  # map: C,H,W
        rows.append([v if basis is None else basis.encode(v[None])[0] for v in vectors])
    return np.asarray(rows)


def _aggregate(units: np.ndarray, rule: str) -> np.ndarray:
    """A loop's per-position units aggregated per image by ``rule``."""
    if rule == "cls":
        units = units[:, :1]
    elif rule.startswith("patch-"):
        units = units[:, 1:]
    return units.max(axis=1) if rule.endswith("max") else units.mean(axis=1)


@pytest.mark.parametrize("layer", ["encoder.layers.encoder_layer_1", "encoder.ln"])
def test_latents_per_token_of_a_vit_equal_a_loop_over_the_tokens(tiny_vit, images, layer):
    info = tiny_vit.layer_info(layer)
    assert (info.units, info.positions) == (VIT_WIDTH, TOKENS)
    output = _layer_output(tiny_vit, layer, images)
    assert output.shape == (3, 17, VIT_WIDTH)
    for name, basis in {**_bases(VIT_WIDTH), "units": None}.items():
        looped = _one_at_a_time(output, basis)
        for rule in RULES:
            got = tiny_vit.read(images, LayerReading(layer, TOKENS, rule, basis))
            np.testing.assert_allclose(
                got, _aggregate(looped, rule), rtol=1e-5, atol=1e-5, err_msg=f"{name} {rule}"
            )
    # the default reading of raw units is the CLS token, as ever
    np.testing.assert_allclose(tiny_vit.activations(images, layer), output[:, 0], atol=1e-6)


def test_latents_per_location_of_a_cnn_map_equal_a_loop_over_the_locations(learned, images):
    info = learned.layer_info("conv4")
    assert (info.units, info.positions) == (CONV4, MAP)
    output = _layer_output(learned, "conv4", images)
    assert output.shape == (3, CONV4, 8, 8)
    for name, basis in {**_bases(CONV4), "units": None}.items():
        looped = _one_at_a_time(output, basis)
        for rule in ("mean", "max"):
            got = learned.read(images, LayerReading("conv4", MAP, rule, basis))
            np.testing.assert_allclose(
                got, _aggregate(looped, rule), rtol=1e-5, atol=1e-5, err_msg=f"{name} {rule}"
            )
    sae = _bases(CONV4)["topk-rescaled"]
    per_position = learned.read(images, LayerReading("conv4", MAP, "mean", sae))
    pooled = sae.encode(output.mean(axis=(2, 3)))
    assert np.abs(per_position - pooled).max() > 0.1  # encode(mean(x)) is not mean(encode(x))


def test_a_big_basis_is_encoded_a_few_images_at_a_time_with_the_same_result(
    learned, images, monkeypatch
):
    sae = _bases(CONV4)["layer-normed"]
    reading = LayerReading("conv4", MAP, "max", sae)
    whole = learned.read(images, reading)
    monkeypatch.setattr("inference.positions.MAX_CHUNK_VALUES", 1)  # one image per chunk
    np.testing.assert_allclose(learned.read(images, reading), whole, atol=1e-6)


def test_names_carry_the_rule_after_the_basis():
    assert unit_space("conv4#max", "l4") == "conv4@l4#max"
    assert unit_space("conv4", "l4") == "conv4@l4"
    assert with_positions("conv4@l4", "patch-mean") == "conv4@l4#patch-mean"
    assert with_positions("conv4@l4#max", "mean") == "conv4@l4#mean"
    assert split_positions("encoder.ln#cls") == ("encoder.ln", "cls")
    assert split_positions("planted@sae-0123") == ("planted@sae-0123", None)
    with pytest.raises(PositionsError, match="unknown positions rule 'median'; use one of: cls"):
        split_positions("conv4#median")
    assert default_rule(MAP, None) == "mean" and default_rule(TOKENS, "directions") == "cls"
    assert default_rule(MAP, "sae") == "max" and default_rule(TOKENS, "sae") == "max"
    assert default_rule(None, "sae") is None


# ----- on the server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The toy world's learned CNN behind a real server, with bases over its conv4 map."""
    registry = BasisRegistry()
    for name, basis in _bases(CONV4).items():
        registry.add(basis, name)
    service = open_service(
        [load_generator("procedural:shapes", "cpu")],
        [load_target("learned:shapes", "cpu")],
        tmp_path_factory.mktemp("store"),
        bases=registry,
    )
    running = start_server_thread(create_app(service))
    yield running.url, service
    running.stop()


def _call(url: str, work):
    async def go():
        async with LineClient(url, retries=0) as client:
            return await work(client)

    return asyncio.run(go())


def _probe(url: str, layer: str, seeds: list[int]):
    prompts = ["a red circle", "two blue squares", "a striped star"][: len(seeds)]
    return _call(
        url,
        lambda client: client.probe(
            prompts, seeds, "learned:shapes", layer, options=RenderOptions(width=64, height=64)
        ),
    )


def _read(url: str, layer: str, ids: list[str], units=None) -> np.ndarray:
    return _call(url, lambda client: client.activations("learned:shapes", layer, ids, units)).values


def test_the_server_reads_latents_per_position_and_caches_one_vector_per_image(server):
    url, service = server
    target = service.targets["learned:shapes"]
    sae = service.bases.get("topk-rescaled")
    probed = _probe(url, "conv4@topk-rescaled#max", [1, 2, 3])  # rendered to pixels, read
    ids = [image.id for image in probed.images]
    images = [service.store.load(image_id) for image_id in ids]
    direct = target.read(images, LayerReading("conv4", MAP, "max", sae))
    assert probed.values.shape == (3, D_SAE)
    np.testing.assert_allclose(probed.values, direct, rtol=1e-5, atol=1e-5)
    # from the PNGs, without a rule: an SAE's default, max
    stored = _read(url, "conv4@topk-rescaled", ids, [3, 0])
    np.testing.assert_allclose(stored, direct[:, [3, 0]], rtol=1e-5, atol=1e-5)
    cached = service.cache.get_many(target_identity(target), f"conv4@{sae.key}#max", set(ids))
    assert {vector.shape for vector in cached.values()} == {(D_SAE,)}  # latents, not positions
    raw = _read(url, "conv4#max", ids)
    np.testing.assert_allclose(raw, target.read(images, LayerReading("conv4", MAP, "max")))
    mean = _read(url, "conv4", ids)
    np.testing.assert_allclose(mean, target.activations(images, "conv4"), atol=1e-6)
    directions = _read(url, "conv4@directions", ids)
    by_mean = service.bases.get("directions").encode(mean)  # linear: mean, then project
    np.testing.assert_allclose(directions, by_mean, rtol=1e-4, atol=1e-4)


def test_models_says_which_layers_have_positions(server):
    url, _service = server
    models = _call(url, lambda client: client.models())
    layers = {entry["name"]: entry for entry in models["targets"][0]["layers"]}
    assert layers["conv4"]["positions"] == "map" and layers["head"]["positions"] is None


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("conv4#cls", "layer 'conv4' of 'learned:shapes' is a feature map (no class token, no "
                      "patch tokens), so it cannot be read by 'cls'; a map is read by mean or max"),
        ("conv4@topk-rescaled#patch-max", "cannot be read by 'patch-max'"),
        ("head#max", "layer 'head' of 'learned:shapes' gives one vector per image, so it has no "
                     "positions to aggregate; drop '#max' from the layer name"),
        ("conv4#median", "unknown positions rule 'median'; use one of: cls (the class token"),
    ],
)  # fmt: skip
def test_the_server_refuses_a_rule_that_does_not_fit(server, layer, message):
    url, _service = server
    with pytest.raises(LineServerError) as caught:
        _probe(url, layer, [9])
    assert caught.value.status == 400
    assert message in caught.value.message


def test_a_run_checks_the_rule_before_it_starts():
    layers = {"conv4": CONV4, "head": 36, "conv4@sae-1": D_SAE}
    kinds = {"conv4": MAP, "head": None}
    check_layer_units(layers, "learned:shapes", "conv4@sae-1#max", [39], kinds)
    with pytest.raises(RunSetupError, match="cannot be read by 'cls'"):
        check_layer_units(layers, "learned:shapes", "conv4@sae-1#cls", [0], kinds)
    with pytest.raises(RunSetupError, match="unit 40 is out of range"):
        check_layer_units(layers, "learned:shapes", "conv4@sae-1#mean", [40], kinds)
    with pytest.raises(RunSetupError, match="unknown positions rule 'top'"):
        check_layer_units(layers, "learned:shapes", "conv4#top", [0], kinds)


def test_a_ray_replica_gets_the_basis_by_its_spec_not_with_every_job(tmp_path):
    """Jobs sent to Ray Serve replicas carry the basis's spec; the replica loads it once."""
    from inference.bases import load_basis, write_sae
    from inference.batching import ActivationJob, BackendError
    from inference.ray_serve import ReplicaBases, measure_request

    rng = np.random.default_rng(5)
    tensors = {"W_enc": rng.normal(size=(CONV4, D_SAE)), "b_dec": rng.normal(size=CONV4)}
    basis = load_basis(f"sae:{write_sae(tmp_path / 'sae', tensors, {})}")
    reading = LayerReading("conv4", MAP, "max", basis)
    job = ActivationJob("image", Image.new("RGB", (8, 8)), reading.key, reading)
    request = measure_request("learned:shapes", job)
    assert request.basis == basis.source and request.job.reading.basis is None
    replica = ReplicaBases()
    restored = replica.job(request)
    assert restored.reading.basis.hash == basis.hash and restored.reading.key == job.layer
    assert replica.job(request).reading.basis is restored.reading.basis  # loaded once
    write_sae(tmp_path / "sae", {**tensors, "b_dec": tensors["b_dec"] + 1}, {})
    with pytest.raises(BackendError, match="the file changed: restart the server"):
        ReplicaBases().job(request)
