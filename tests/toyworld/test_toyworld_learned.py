"""learned:shapes: training lowers the loss, the shipped weights reach their documented held-out
figures, bad weight files get clear errors, and the target reads its named layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inference.protocols import BackendSpecError
from inference.registry import load_target
from toyworld.learned import (
    HELD_OUT_PROBE_SEED,
    LAYER_WIDTHS,
    WEIGHTS_PATH,
    LearnedShapesNet,
    TrainConfig,
    TrainResult,
    create_learned_target,
    evaluate,
    load_weights,
    probe_tensors,
    save_weights,
    train_learned_shapes,
)
from toyworld.probes import ATTRIBUTES, MANY_OBJECTS, probe_set

SHIPPED_MIN_AUC = 0.86
"""Documented floor of the shipped weights' held-out macro ROC AUC (README, toy world)."""
SHIPPED_MIN_ACCURACY = 0.87
"""Documented floor of the shipped weights' held-out mean per-attribute accuracy."""


def test_training_from_scratch_lowers_the_loss():
    config = TrainConfig(seed=3, train_scenes=96, held_out_scenes=48, epochs=3, batch_size=32)
    _model, result = train_learned_shapes(config)
    assert len(result.losses) == 3
    assert result.losses[-1] < result.losses[0]
    assert 0.0 <= result.held_out_accuracy <= 1.0


def test_training_is_reproducible_for_a_seed():
    config = TrainConfig(seed=5, train_scenes=48, held_out_scenes=40, epochs=1, batch_size=16)
    first, _ = train_learned_shapes(config)
    second, _ = train_learned_shapes(config)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_shipped_weights_reach_the_documented_held_out_figures():
    model, metadata = load_weights(WEIGHTS_PATH)
    pixels, targets = probe_tensors(probe_set(400, HELD_OUT_PROBE_SEED))
    accuracy, auc = evaluate(model, pixels, targets)
    assert auc >= SHIPPED_MIN_AUC
    assert accuracy >= SHIPPED_MIN_ACCURACY
    assert float(metadata["held_out_auc"]) >= SHIPPED_MIN_AUC
    assert json.loads(metadata["attributes"]) == list(ATTRIBUTES)


def test_the_target_reads_named_layers_of_the_shipped_network():
    target = load_target("learned:shapes", "cpu")
    layers = {info.name: info.units for info in target.layers()}
    assert layers == {**LAYER_WIDTHS, "head": len(ATTRIBUTES)}
    assert max(layers.values()) >= 64
    images = [probe.render() for probe in probe_set(4, 77)]
    values = np.asarray(target.activations(images, "conv4"))
    assert values.shape == (4, LAYER_WIDTHS["conv4"]) and np.isfinite(values).all()


def test_head_units_predict_their_attribute():
    """Unit k of ``head`` is the logit of attribute k: scenes with "many" objects score higher."""
    target = load_target("learned:shapes", "cpu")
    probes = probe_set(200, 78)
    head = np.asarray(target.activations([p.render() for p in probes], "head"))
    column = ATTRIBUTES.index("many")
    has = np.array(["many" in p.attributes for p in probes])
    assert has.any() and (~has).any(), f"the probe set needs scenes of {MANY_OBJECTS}+ objects"
    assert head[has, column].mean() > head[~has, column].mean()


def test_unknown_learned_target_lists_the_valid_ones():
    with pytest.raises(BackendSpecError, match="'learned:shapes'"):
        load_target("learned:circles", "cpu")


def test_corrupt_weights_file_says_which_file_and_what_to_do(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(BackendSpecError, match=r"broken\.safetensors.*line toyworld train"):
        create_learned_target("shapes", "cpu", weights=path)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(BackendSpecError, match=r"missing\.safetensors does not exist"):
        create_learned_target("shapes", "cpu", weights=tmp_path / "missing.safetensors")


def test_weights_of_another_architecture_are_refused_with_the_expected_shapes(tmp_path):
    path = tmp_path / "other.safetensors"
    other = LearnedShapesNet(outputs=5)
    save_weights(other, TrainResult(TrainConfig()), path)
    with pytest.raises(BackendSpecError, match=r"does not fit the network: expected tensors"):
        create_learned_target("shapes", "cpu", weights=path)
