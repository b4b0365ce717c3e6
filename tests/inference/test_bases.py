"""Unit bases on the real server: SAE latents and directions computed from the cached layer
vectors equal a direct computation, cost no model run, and every bad basis is refused in words."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from cli.app import app
from inference.app import create_app, start_server_thread
from inference.bases import (
    BasisError,
    BasisRegistry,
    load_basis,
    unit_space,
    write_directions,
    write_sae,
)
from inference.config import ServeConfig, ServeConfigError, build_service
from inference.registry import load_generator, load_target
from inference.service import open_service
from inference.wire import RenderOptions
from tools.client import LineClient, LineServerError

D_IN = 28  # planted:shapes's planted layer
D_SAE = 16
PROMPTS = ["a red circle", "two blue triangles", "a striped star", "green hearts", "a photo"]


def _sae_tensors(seed: int, d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(0, 0.6, (d_in, d_sae)).astype(np.float32),
        "b_enc": rng.normal(0, 0.2, d_sae).astype(np.float32),
        "b_dec": rng.normal(0, 0.2, d_in).astype(np.float32),
        "W_dec": rng.normal(0, 0.3, (d_sae, d_in)).astype(np.float32),
    }


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _pre(x: np.ndarray, t: dict[str, np.ndarray], subtract_b_dec: bool = True) -> np.ndarray:
    return (x - t["b_dec"] * subtract_b_dec) @ t["W_enc"] + t["b_enc"]


def _top_k(pre: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(pre)
    for row, values in enumerate(pre):
        keep = np.argsort(-values)[:k]
        out[row, keep] = _relu(values[keep])
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, tuple[str, object]]:
    """Every supported kind of basis on disk, with a direct (numpy) computation of its units."""
    folder = tmp_path_factory.mktemp("bases")
    standard = _sae_tensors(1)
    jump = {**_sae_tensors(2), "threshold": np.full(D_SAE, 0.3, np.float32)}
    topk = _sae_tensors(3)
    plain = {**_sae_tensors(4), "threshold": np.full(D_SAE, 0.2, np.float32)}
    no_b_dec = _sae_tensors(5)
    normed = _sae_tensors(6)
    layer_normed = _sae_tensors(7)
    rows = np.random.default_rng(8).normal(0, 1, (6, D_IN)).astype(np.float32)
    mean = np.random.default_rng(9).uniform(0, 0.5, D_IN).astype(np.float32)

    def norm_rescale(x: np.ndarray) -> np.ndarray:
        return x * np.sqrt(D_IN) / np.linalg.norm(x, axis=1, keepdims=True)

    def layer_norm(x: np.ndarray) -> np.ndarray:
        centred = x - x.mean(axis=1, keepdims=True)
        return centred / (centred.std(axis=1, ddof=1, keepdims=True) + 1e-5)

    write_sae(folder / "standard", standard, {"architecture": "standard"})
    write_sae(folder / "jumprelu", jump, {"architecture": "jumprelu"})
    write_sae(folder / "topk", topk, {"architecture": "topk", "k": 3})
    write_sae(
        folder / "old-topk", topk, {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}}
    )
    write_sae(folder / "no-b-dec", no_b_dec, {"apply_b_dec_to_input": False})
    write_sae(folder / "normed", normed, {"normalize_activations": "constant_norm_rescale"})
    write_sae(folder / "layer-normed", layer_normed, {"normalize_activations": "layer_norm"})
    write_sae(folder / "plain", plain, {})
    (folder / "plain" / "cfg.json").unlink()  # a plain safetensors file: jumprelu by its tensors
    write_directions(folder / "rows.npy", rows)
    write_directions(folder / "centred.safetensors", rows, mean)
    return {
        "standard": (f"sae:{folder / 'standard'}", lambda x: _relu(_pre(x, standard))),
        "jumprelu": (
            f"sae:{folder / 'jumprelu'}",
            lambda x: _relu(_pre(x, jump)) * (_pre(x, jump) > 0.3),
        ),
        "topk": (f"sae:{folder / 'topk'}", lambda x: _top_k(_pre(x, topk), 3)),
        "old-topk": (f"sae:{folder / 'old-topk'}", lambda x: _top_k(_pre(x, topk), 3)),
        "no-b-dec": (f"sae:{folder / 'no-b-dec'}", lambda x: _relu(_pre(x, no_b_dec, False))),
        "normed": (
            f"sae:{folder / 'normed'}",
            lambda x: _relu(_pre(norm_rescale(x), normed)),
        ),
        "layer-normed": (
            f"sae:{folder / 'layer-normed'}",
            lambda x: _relu(_pre(layer_norm(x), layer_normed)),
        ),
        "plain": (
            f"sae:{folder / 'plain' / 'sae_weights.safetensors'}",
            lambda x: _relu(_pre(x, plain)) * (_pre(x, plain) > 0.2),
        ),
        "rows": (f"directions:{folder / 'rows.npy'}", lambda x: x @ rows.T),
        "centred": (f"directions:{folder / 'centred.safetensors'}", lambda x: (x - mean) @ rows.T),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, bases):
    """The toy world behind a real server that declares every basis (NAME=SPEC)."""
    registry = BasisRegistry.declared([f"{name}={spec}" for name, (spec, _) in bases.items()])
    service = open_service(
        [load_generator("procedural:shapes", "cpu")],
        [load_target("planted:shapes", "cpu")],
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


def _image_ids(url: str, seed: int = 0) -> list[str]:
    async def render(client):
        images = await client.generate_images(
            PROMPTS, [seed + i for i in range(len(PROMPTS))], RenderOptions(width=64, height=64)
        )
        return [image.id for image in images]

    return _call(url, render)


def _counter(url: str, name: str) -> float:
    text = _call(url, lambda client: client.metrics_text())
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def test_latents_equal_a_direct_computation_for_every_architecture(server, bases):
    url, _service = server
    ids = _image_ids(url)

    async def read(client):
        raw = (await client.activations("planted:shapes", "planted", ids)).values
        spaces = {
            name: await client.activations("planted:shapes", unit_space("planted", name), ids)
            for name in bases
        }
        subset = await client.activations(
            "planted:shapes", unit_space("planted", "topk"), ids, units=[5, 0, 9]
        )
        picked = await client.activations(
            "planted:shapes", unit_space("planted", "standard"), ids, units=[5, 0, 9]
        )
        return raw, spaces, subset, picked

    raw, spaces, subset, picked = _call(url, read)
    assert raw.shape == (len(PROMPTS), D_IN)
    for name, (_spec, direct) in bases.items():
        expected = direct(raw.astype(np.float64))
        assert spaces[name].values.shape == expected.shape, name
        np.testing.assert_allclose(spaces[name].values, expected, atol=1e-5, err_msg=name)
    assert np.count_nonzero(spaces["topk"].values, axis=1).max() <= 3
    assert np.any(spaces["standard"].values > 0) and np.any(spaces["jumprelu"].values == 0)
    np.testing.assert_allclose(subset.values, spaces["topk"].values[:, [5, 0, 9]], atol=1e-6)
    np.testing.assert_allclose(picked.values, spaces["standard"].values[:, [5, 0, 9]], atol=1e-6)
    assert subset.units == [5, 0, 9]


def test_latents_of_cached_images_run_no_model(server):
    url, _service = server
    ids = _image_ids(url, seed=100)

    async def raw(client):
        return await client.activations("planted:shapes", "planted", ids)

    _call(url, raw)  # measures the layer vectors once
    computed = _counter(url, "line_activations_computed_total")
    hits = _counter(url, "line_activation_cache_hits_total")

    async def latents(client):
        return await client.activations("planted:shapes", "planted@standard", ids, units=[1, 2])

    assert _call(url, latents).values.shape == (len(PROMPTS), 2)
    assert _counter(url, "line_activations_computed_total") == computed
    assert _counter(url, "line_activation_cache_hits_total") == hits + len(PROMPTS)


def test_models_lists_the_unit_spaces_and_the_bases(server, bases):
    url, _service = server
    models = _call(url, lambda client: client.models())
    [target] = models["targets"]
    layers = {entry["name"]: entry for entry in target["layers"]}
    key = load_basis(bases["standard"][0]).key
    assert layers[f"planted@{key}"]["units"] == D_SAE
    assert layers[f"planted@{key}"]["layer"] == "planted"
    assert not any(name.startswith("features@") for name in layers)  # 26 wide: no basis fits
    assert {"standard", "rows"} <= {name for entry in models["bases"] for name in entry["names"]}


@pytest.mark.parametrize(
    ("layer", "units", "status", "message"),
    [
        ("planted@nope", None, 404, "this server has no basis 'nope'; it has: standard"),
        ("features@standard", None, 400,
         "(d_in 28), but layer 'features' of 'planted:shapes' has 26"),
        ("planted@rows", [6], 400,
         "unit 6 is out of range: layer 'planted@rows' of 'planted:shapes' has 6 units, "
         "indices 0 to 5"),
    ],
)  # fmt: skip
def test_the_server_refuses_bad_basis_requests(server, layer, units, status, message):
    url, _service = server
    ids = _image_ids(url)[:1]
    with pytest.raises(LineServerError) as caught:
        _call(url, lambda client: client.activations("planted:shapes", layer, ids, units))
    assert caught.value.status == status
    assert message in caught.value.message


def test_bases_load_by_path_only_on_loopback_servers(server, bases, tmp_path):
    url, service = server
    spec = bases["rows"][0]
    service.bases.allow_paths = False
    with pytest.raises(LineServerError) as refused:
        _call(url, lambda client: client.add_basis(spec))
    assert refused.value.status == 403
    assert (
        "declare the basis when starting it: line serve --basis NAME=SPEC" in refused.value.message
    )
    service.bases.allow_paths = True
    try:
        entry = _call(url, lambda client: client.add_basis(spec))
        with pytest.raises(LineServerError) as missing:
            _call(url, lambda client: client.add_basis(f"sae:{tmp_path / 'missing'}"))
    finally:
        service.bases.allow_paths = False
    assert entry.key == load_basis(spec).key and entry.units == 6 and entry.d_in == D_IN
    assert missing.value.status == 400 and "does not exist" in missing.value.message


# ----- bad bases -------------------------------------------------------------------------------
def _nan_sae(folder):
    tensors = _sae_tensors(1)
    tensors["W_enc"][3, 4] = np.nan
    tensors["b_enc"][0] = np.inf
    return f"sae:{write_sae(folder, tensors, {})}"


def _unknown_architecture(folder):
    return f"sae:{write_sae(folder, _sae_tensors(1), {'architecture': 'gated-mystery'})}"


def _not_a_tensor_file(folder):
    path = folder / "weights.safetensors"
    path.write_text("these are not weights")
    return f"sae:{path}"


def _npy_sae(folder):
    return f"sae:{write_directions(folder / 'rows.npy', np.ones((3, D_IN)))}"


def _missing_config(folder):
    write_sae(folder, _sae_tensors(1), {})
    (folder / "cfg.json").unlink()
    return f"sae:{folder}"


def _inf_directions(folder):
    rows = np.ones((3, D_IN), np.float32)
    rows[1, 1] = -np.inf
    return f"directions:{write_directions(folder / 'rows.npy', rows)}"


def _vector_directions(folder):
    path = folder / "rows.npy"
    np.save(path, np.ones(D_IN, np.float32))
    return f"directions:{path}"


def _topk_without_k(folder):
    return f"sae:{write_sae(folder, _sae_tensors(1), {'architecture': 'topk'})}"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_nan_sae, "tensor W_enc has 1 NaN or infinite value(s) of 448; the basis cannot be used"),
        (_unknown_architecture,
         "unknown SAE architecture 'gated-mystery' in cfg.json; supported: standard, jumprelu, "
         "topk"),
        (_not_a_tensor_file, "is neither a safetensors nor a .npy file"),
        (_npy_sae, "an SAE is a SAELens folder or a .safetensors file"),
        (_missing_config, "is not a SAELens folder: it lacks cfg.json"),
        (_inf_directions, "tensor directions has 1 NaN or infinite value(s)"),
        (_vector_directions, "directions must be a K x d_in matrix, got shape [28]"),
        (_topk_without_k, "a topk SAE needs a positive integer 'k' in its config"),
        (lambda folder: f"pca:{folder}", "cannot read basis 'pca:"),
        (lambda folder: f"sae:{folder / 'absent'}", "does not exist"),
    ],
)  # fmt: skip
def test_bad_bases_are_refused_with_what_is_wrong(tmp_path, make, message):
    folder = tmp_path / "basis"
    folder.mkdir()
    with pytest.raises(BasisError) as caught:
        load_basis(make(folder))
    assert message in str(caught.value)


def test_a_basis_hash_follows_its_tensors_not_its_path(tmp_path):
    tensors = _sae_tensors(1)
    first = load_basis(f"sae:{write_sae(tmp_path / 'a', tensors, {})}")
    same = load_basis(f"sae:{write_sae(tmp_path / 'b', tensors, {})}")
    tensors["b_enc"][0] += 1e-3
    other = load_basis(f"sae:{write_sae(tmp_path / 'c', tensors, {})}")
    assert first.hash == same.hash and first.key == f"sae-{first.hash[:12]}"
    assert other.hash != first.hash


def test_serve_refuses_a_basis_that_fits_no_layer(tmp_path):
    spec = f"sae:{write_sae(tmp_path / 'wide', _sae_tensors(1, d_in=512), {})}"
    config = ServeConfig(targets=["planted:shapes"], store=tmp_path / "store", bases=[f"w={spec}"])
    wanted = "reads 512-wide vectors, but no layer of the served targets has 512 units"
    with pytest.raises(ServeConfigError, match=wanted):
        build_service(config)
    bad_name = ServeConfig(targets=["planted:shapes"], store=tmp_path, bases=[spec])
    with pytest.raises(ServeConfigError, match="write NAME=SPEC"):
        build_service(bad_name)


def test_line_layers_shows_the_basis_size(tmp_path):
    spec = f"sae:{write_sae(tmp_path / 'sae', _sae_tensors(1), {'architecture': 'topk', 'k': 4})}"
    key = load_basis(spec).key
    shown = CliRunner().invoke(app, ["layers", "planted:shapes", "--basis", spec, "--json"])
    assert shown.exit_code == 0, shown.output
    rows = {row["layer"]: row for row in json.loads(shown.output)}
    assert rows[f"planted@{key}"]["units"] == D_SAE
    assert rows[f"planted@{key}"]["basis"] == "sae (topk, k=4): 16 latents over 28-wide vectors"
    wide = f"sae:{write_sae(tmp_path / 'wide', _sae_tensors(1, d_in=64), {})}"
    refused = CliRunner().invoke(app, ["layers", "planted:shapes", "--basis", wide])
    assert refused.exit_code == 2
    assert "reads 64-wide vectors, but no layer of planted:shapes has 64 units" in refused.output
