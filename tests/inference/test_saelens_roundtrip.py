"""SAEs written by SAELens itself, read by LINE: every architecture and flag LINE claims equals
SAELens's own ``encode()`` to 1e-5, at every position and aggregated per image; every other is
refused by name.

Each SAE is built here with SAELens (a test extra: ``pip install -e '.[dev]'``), given seeded
weights (decoder rows of norms far from 1, non-zero biases and thresholds), saved the way
researchers save them (``save_model``, ``save_inference_model``, training checkpoints, SAELens 5
configs) and loaded back by SAELens (``SAE.load_from_disk``) for the reference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sae_lens = pytest.importorskip("sae_lens")

from inference.bases import (  # noqa: E402
    SAE_ENCODE_FIELDS,
    SAE_INERT_FIELDS,
    BasisError,
    load_basis,
)
from inference.positions import TOKENS, LayerReading  # noqa: E402

D_IN, D_SAE, K = 12, 48, 6
IMAGES, POSITIONS = 5, 9  # a ViT layer: a class token and 8 patch tokens
RULES = ("cls", "mean", "max", "patch-mean", "patch-max")


def _seeded(sae, seed: int):
    """Give every parameter and buffer seeded values of a realistic scale, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sae.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name == "W_enc":
                value = noise / D_IN**0.5
            elif name == "W_dec":
                value = noise * 0.5  # row norms near 1.7, not 1: the rescale flag matters
            elif name in ("threshold", "topk_threshold"):
                value = torch.rand(tensor.shape, generator=generator) * 0.4 + 0.05
            elif name == "log_threshold":
                value = torch.log(torch.rand(tensor.shape, generator=generator) * 0.4 + 0.05)
            else:
                value = noise * 0.3
            tensor.copy_(value.to(tensor.dtype))
    return sae


def _inputs(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((IMAGES, POSITIONS, D_IN), generator=generator) * 1.5 + 0.2


def _saved(folder: Path, sae, how: str = "save_model") -> Path:
    getattr(sae, how)(str(folder))
    return folder


def _v5(folder: Path, config: dict, seed: int, threshold: bool = False) -> Path:
    """An SAE in SAELens 5's format: its flat cfg.json (booleans, activation_fn_str, hook_point
    ...) and the weights it wrote."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn((D_IN, D_SAE), generator=generator) / D_IN**0.5,
        "b_enc": torch.randn(D_SAE, generator=generator) * 0.3,
        "W_dec": torch.randn((D_SAE, D_IN), generator=generator) * 0.5,
        "b_dec": torch.randn(D_IN, generator=generator) * 0.3,
    }
    if threshold:
        tensors["threshold"] = torch.rand(D_SAE, generator=generator) * 0.4
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    base = {
        "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
        "device": "cpu", "model_name": "vit-b-16", "hook_point": "blocks.9.hook_resid_post",
        "hook_point_layer": 9, "hook_point_head_index": None, "activation_fn_str": "relu",
        "apply_b_dec_to_input": True, "finetuning_scaling_factor": False, "context_size": 197,
        "dataset_path": "imagenet", "dataset_trust_remote_code": True, "prepend_bos": False,
        "normalize_activations": "none", "sae_lens_training_version": "5.9.1",
        "neuronpedia_id": None,
    }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps({**base, **config}))
    return folder


def _build(name: str, folder: Path) -> Path:
    """Write the SAE ``name`` names into ``folder`` with SAELens; the folder."""
    s = sae_lens
    plain = {"d_in": D_IN, "d_sae": D_SAE}
    makers: dict[str, Callable[[], Path]] = {
        "standard": lambda: _saved(folder, _seeded(s.StandardSAE(s.StandardSAEConfig(**plain)), 1)),
        "standard layer_norm": lambda: _saved(folder, _seeded(s.StandardSAE(
            s.StandardSAEConfig(**plain, normalize_activations="layer_norm")), 2)),
        "standard constant_norm_rescale": lambda: _saved(folder, _seeded(s.StandardSAE(
            s.StandardSAEConfig(**plain, normalize_activations="constant_norm_rescale")), 3)),
        "standard expected_average_only_in": lambda: _saved(folder, _seeded(s.StandardSAE(
            s.StandardSAEConfig(**plain, normalize_activations="expected_average_only_in")), 4)),
        "standard without b_dec on the input": lambda: _saved(folder, _seeded(s.StandardSAE(
            s.StandardSAEConfig(**plain, apply_b_dec_to_input=False)), 5)),
        "standard training checkpoint": lambda: _saved(folder, _seeded(
            s.StandardTrainingSAE(s.StandardTrainingSAEConfig(**plain)), 6)),
        "jumprelu": lambda: _saved(folder, _seeded(s.JumpReLUSAE(s.JumpReLUSAEConfig(**plain)), 7)),
        "jumprelu bf16 weights": lambda: _saved(folder, _seeded(s.JumpReLUSAE(
            s.JumpReLUSAEConfig(**plain, dtype="bfloat16")), 8)),
        "jumprelu training checkpoint": lambda: _saved(folder, _seeded(
            s.JumpReLUTrainingSAE(s.JumpReLUTrainingSAEConfig(**plain)), 9)),
        "jumprelu from batchtopk (save_inference_model)": lambda: _saved(folder, _seeded(
            s.BatchTopKTrainingSAE(s.BatchTopKTrainingSAEConfig(**plain, k=K)), 10),
            "save_inference_model"),
        "jumprelu from matryoshka batchtopk (save_inference_model)": lambda: _saved(
            folder, _seeded(s.MatryoshkaBatchTopKTrainingSAE(s.MatryoshkaBatchTopKTrainingSAEConfig(
                **plain, k=K, matryoshka_widths=[16, D_SAE])), 11), "save_inference_model"),
        "topk": lambda: _saved(folder, _seeded(s.TopKSAE(s.TopKSAEConfig(**plain, k=K)), 12)),
        "topk rescale_acts_by_decoder_norm": lambda: _saved(folder, _seeded(s.TopKSAE(
            s.TopKSAEConfig(**plain, k=K, rescale_acts_by_decoder_norm=True)), 13)),
        "topk training checkpoint (rescaled)": lambda: _saved(folder, _seeded(
            s.TopKTrainingSAE(s.TopKTrainingSAEConfig(**plain, k=K)), 14)),
        "topk save_inference_model (rescale folded)": lambda: _saved(folder, _seeded(
            s.TopKTrainingSAE(s.TopKTrainingSAEConfig(**plain, k=K)), 15), "save_inference_model"),
        "topk layer_norm": lambda: _saved(folder, _seeded(s.TopKSAE(s.TopKSAEConfig(
            **plain, k=K, normalize_activations="layer_norm")), 16)),
        "SAELens 5 normalize_activations true": lambda: _v5(
            folder, {"normalize_activations": True}, 17),
        "SAELens 5 normalize_activations false": lambda: _v5(
            folder, {"normalize_activations": False}, 18),
        "SAELens 5 topk": lambda: _v5(
            folder, {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": K}}, 19),
        "SAELens 5 jumprelu": lambda: _v5(folder, {"architecture": "jumprelu"}, 20, True),
    }  # fmt: skip
    return makers[name]()


SUPPORTED = [
    "standard",
    "standard layer_norm",
    "standard constant_norm_rescale",
    "standard expected_average_only_in",
    "standard without b_dec on the input",
    "standard training checkpoint",
    "jumprelu",
    "jumprelu bf16 weights",
    "jumprelu training checkpoint",
    "jumprelu from batchtopk (save_inference_model)",
    "jumprelu from matryoshka batchtopk (save_inference_model)",
    "topk",
    "topk rescale_acts_by_decoder_norm",
    "topk training checkpoint (rescaled)",
    "topk save_inference_model (rescale folded)",
    "topk layer_norm",
    "SAELens 5 normalize_activations true",
    "SAELens 5 normalize_activations false",
    "SAELens 5 topk",
    "SAELens 5 jumprelu",
]


@pytest.mark.parametrize("name", SUPPORTED)
def test_latents_equal_saelens_encode_per_position_and_per_image(name, tmp_path):
    folder = _build(name, tmp_path / "sae")
    reference = sae_lens.SAE.load_from_disk(str(folder), dtype="float32")  # as SAELens reads it
    basis = load_basis(f"sae:{folder}")
    x = _inputs(seed=len(name))
    with torch.no_grad():
        expected = reference.encode(x).float()
    got = basis.encode_tensor(x)
    assert got.shape == (IMAGES, POSITIONS, D_SAE)
    assert expected.abs().max() > 0.5 and (expected == 0).any()  # not a trivial comparison
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    for rule in RULES:  # aggregated per image, as a ViT layer's tokens are
        tokens = (
            slice(0, 1) if rule == "cls" else slice(1, None) if "patch" in rule else slice(None)
        )
        per_image = expected[:, tokens]
        per_image = per_image.amax(dim=1) if rule.endswith("max") else per_image.mean(dim=1)
        aggregated = LayerReading("layer", TOKENS, rule, basis).read(x)
        np.testing.assert_allclose(aggregated.numpy(), per_image.numpy(), rtol=1e-5, atol=1e-5)


def test_the_rescale_flag_changes_the_latents(tmp_path):
    """What a reader that ignores ``rescale_acts_by_decoder_norm`` would get wrong."""
    folder = _build("topk training checkpoint (rescaled)", tmp_path / "sae")
    config = json.loads((folder / "cfg.json").read_text())
    assert config["rescale_acts_by_decoder_norm"] is True
    x = _inputs(seed=3)
    rescaled = load_basis(f"sae:{folder}").encode_tensor(x)
    (folder / "cfg.json").write_text(json.dumps({**config, "rescale_acts_by_decoder_norm": False}))
    ignored = load_basis(f"sae:{folder}").encode_tensor(x)
    assert (rescaled - ignored).abs().max() > 0.5


def _refused_by_saelens(make) -> Callable[[Path], Path]:
    return lambda folder: _saved(folder, _seeded(make(), 30))


def _with_config(name: str, change: dict) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        _build(name, folder)
        config = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**config, **change}))
        return folder

    return build


S = sae_lens
PLAIN = {"d_in": D_IN, "d_sae": D_SAE}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_refused_by_saelens(lambda: S.GatedSAE(S.GatedSAEConfig(**PLAIN))),
         "SAELens architecture 'gated' is not supported: its gated encoder"),
        (_refused_by_saelens(lambda: S.AbsTopKSAE(S.AbsTopKSAEConfig(**PLAIN, k=K))),
         "SAELens architecture 'abstopk' is not supported"),
        (_refused_by_saelens(
            lambda: S.BatchTopKTrainingSAE(S.BatchTopKTrainingSAEConfig(**PLAIN, k=K))),
         "'batchtopk' is not supported: this is a BatchTopK training checkpoint; save it with "
         "SAELens's save_inference_model"),
        (_refused_by_saelens(lambda: S.Transcoder(
            S.TranscoderConfig(**PLAIN, d_out=8, apply_b_dec_to_input=False))),
         "'transcoder' is not supported: a transcoder maps one layer to another"),
        (_refused_by_saelens(lambda: S.MatchingPursuitSAE(S.MatchingPursuitSAEConfig(**PLAIN))),
         "'matching_pursuit' is not supported"),
        (_refused_by_saelens(lambda: S.StandardSAE(S.StandardSAEConfig(
            **PLAIN, normalize_activations="covariance_whitening"))),
         "normalize_activations is 'covariance_whitening': the SAE expects whitened inputs"),
        (_refused_by_saelens(lambda: S.StandardSAE(S.StandardSAEConfig(
            **PLAIN, reshape_activations="hook_z",
            metadata=sae_lens.saes.sae.SAEMetadata(hook_name="blocks.3.attn.hook_z")))),
         "reshape_activations is 'hook_z': SAELens flattens attention heads' outputs"),
        (lambda folder: _v5(folder, {"hook_point": "blocks.3.attn.hook_z"}, 31),
         "reshape_activations is 'hook_z'"),
        (lambda folder: _v5(folder, {"hook_point_head_index": 2}, 32),
         "hook_point_head_index is 2: the SAE reads one attention head's slice"),
        (lambda folder: _v5(folder, {"activation_fn_str": "tanh-relu"}, 33),
         "activation_fn 'tanh-relu' is not supported"),
        (_with_config("standard", {"mystery_scale": 2.0, "b_flag": True}),
         "cfg.json has field(s) b_flag, mystery_scale that LINE does not know; a field it does "
         "not know might change how SAELens encodes, so the SAE is refused"),
        (_with_config("topk", {"rescale_acts_by_decoder_norm": "yes"}),
         "rescale_acts_by_decoder_norm must be true or false, got 'yes'"),
    ],
)  # fmt: skip
def test_every_other_saelens_sae_is_refused_by_name(tmp_path, make, message):
    folder = make(tmp_path / "sae")
    with pytest.raises(BasisError) as caught:
        load_basis(f"sae:{folder}")
    assert message in str(caught.value)


def test_rescaling_without_w_dec_is_refused(tmp_path):
    folder = _build("topk rescale_acts_by_decoder_norm", tmp_path / "sae")
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "sae_weights.safetensors"))
    del tensors["W_dec"]
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    with pytest.raises(BasisError, match="rescale_acts_by_decoder_norm is true, so encoding needs"):
        load_basis(f"sae:{folder}")


def test_every_saelens_config_field_is_known_to_line():
    """A field a new SAELens adds to an architecture LINE reads must be classified here (does it
    change encode()?) before LINE reads such files; today every field is."""
    from sae_lens.loading.pretrained_sae_loaders import LLM_METADATA_KEYS
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    read = ("standard", "jumprelu", "topk")
    saved_as_jumprelu = ("batchtopk", "matryoshka_batchtopk")
    configs = [SAE_CLASS_REGISTRY[name][1] for name in read]
    configs += [SAE_TRAINING_CLASS_REGISTRY[name][1] for name in (*read, *saved_as_jumprelu)]
    fields = {field.name for config in configs for field in dataclasses.fields(config)}
    known = SAE_ENCODE_FIELDS | SAE_INERT_FIELDS
    assert fields - known == set()
    assert set(LLM_METADATA_KEYS) - known == set()  # SAELens 5's top-level metadata fields
