"""Target models: layer discovery, exact activations, checkpoints and user factories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models

from inference.pixels import pixels_of
from inference.protocols import UnknownLayerError
from inference.registry import BackendSpecError, load_target
from inference.targets.torch_target import imagenet_preprocess


def images(count: int = 3, size: int = 80) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size + 10, 3), dtype=np.uint8))
        for _ in range(count)
    ]


def test_layers_list_named_modules_with_unit_counts(resnet18):
    layers = {layer.name: layer.units for layer in resnet18.layers()}
    assert layers["conv1"] == 64
    assert layers["layer3.1.conv2"] == 256
    assert layers["layer4"] == 512 and layers["avgpool"] == 512 and layers["fc"] == 1000


def test_activations_equal_a_direct_forward_pass(resnet18):
    batch = images()
    got = resnet18.activations(batch, "layer3")
    module = resnet18.module
    preprocess = imagenet_preprocess()
    x = torch.stack([preprocess(pixels_of(image)) for image in batch])
    with torch.inference_mode():
        x = module.maxpool(module.relu(module.bn1(module.conv1(x))))
        expected = module.layer3(module.layer2(module.layer1(x))).mean(dim=(2, 3)).numpy()
        logits = module(torch.stack([preprocess(pixels_of(image)) for image in batch])).numpy()
    assert got.shape == (3, 256) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(resnet18.activations(batch, "fc"), logits, rtol=1e-5, atol=1e-5)


def test_vit_layers_read_the_cls_token():
    target = load_target("torchvision:vit_b_32:random", "cpu")
    batch = images(2)
    preprocess = imagenet_preprocess()
    x = torch.stack([preprocess(pixels_of(image)) for image in batch])
    module = target.module
    with torch.inference_mode():
        tokens = module.encoder(
            torch.cat([module.class_token.expand(2, -1, -1), module._process_input(x)], dim=1)
        )
    np.testing.assert_allclose(
        target.activations(batch, "encoder.ln"), tokens[:, 0].numpy(), rtol=1e-4, atol=1e-4
    )


def test_unknown_layer_lists_the_valid_ones(resnet18):
    with pytest.raises(UnknownLayerError, match=r"no layer 'layer9'; valid layers: conv1, bn1"):
        resnet18.activations(images(1), "layer9")


def test_bad_torchvision_specs():
    with pytest.raises(BackendSpecError, match=r"no classification model 'resnet19'.*resnet18"):
        load_target("torchvision:resnet19", "cpu")
    with pytest.raises(BackendSpecError, match=r"no weights 'IMAGENET9'.*IMAGENET1K_V1"):
        load_target("torchvision:resnet18:IMAGENET9", "cpu")
    with pytest.raises(BackendSpecError, match="unknown target 'keras:resnet'"):
        load_target("keras:resnet", "cpu")


def places365_checkpoint(path, extra=None):
    torch.manual_seed(1)
    module = models.resnet18(num_classes=365)
    state = {f"module.{key}": value for key, value in module.state_dict().items()}
    checkpoint = {"epoch": 90, "arch": "resnet18", "state_dict": state}
    if extra is not None:
        checkpoint["extra"] = extra
    torch.save(checkpoint, path)
    return module


class NotATensor:
    """Stands for any custom object pickled into a checkpoint."""


def test_places365_checkpoint_loads_with_prefix_stripped(tmp_path):
    path = tmp_path / "resnet18_places365.pth.tar"
    module = places365_checkpoint(path)
    target = load_target(f"places365:{path}", "cpu")
    assert {layer.name: layer.units for layer in target.layers()}["fc"] == 365
    batch = images(2)
    x = torch.stack([imagenet_preprocess()(pixels_of(image)) for image in batch])
    with torch.inference_mode():
        expected = module.eval()(x).numpy()
    np.testing.assert_allclose(target.activations(batch, "fc"), expected, rtol=1e-5, atol=1e-5)


def test_checkpoints_with_objects_need_the_trust_flag(tmp_path):
    path = tmp_path / "resnet18_places365.pth.tar"
    places365_checkpoint(path, extra=NotATensor())
    with pytest.raises(BackendSpecError, match="pass --trust-checkpoints"):
        load_target(f"places365:{path}", "cpu")
    target = load_target(f"places365:{path}", "cpu", trust_checkpoints=True)
    assert target.layers()[-1].units == 365
    with pytest.raises(BackendSpecError, match="does not exist"):
        load_target(f"places365:{tmp_path / 'missing.pth'}", "cpu")


def test_python_factory_with_its_own_preprocessing(tmp_path):
    source = tmp_path / "my_model.py"
    source.write_text(
        "import torch\n"
        "from torchvision import transforms\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(),\n"
        "                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())\n"
        "    return net, transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])\n"
        "def broken():\n"
        "    return 42\n"
    )
    target = load_target(f"python:{source}:build", "cpu")
    assert [(layer.name, layer.units) for layer in target.layers()] == [
        ("0", 5),
        ("1", 5),
        ("2", 5),
        ("3", 5),
    ]
    batch = images(2)
    out = target.activations(batch, "3")
    x = torch.stack([target.preprocess(image) for image in batch])
    with torch.inference_mode():
        expected = target.module(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    with pytest.raises(BackendSpecError, match=r"must return a torch.nn.Module"):
        load_target(f"python:{source}:broken", "cpu")
    with pytest.raises(BackendSpecError, match=r"no factory 'missing'; callables there: build"):
        load_target(f"python:{source}:missing", "cpu")
    with pytest.raises(BackendSpecError, match="must name a file and a factory"):
        load_target(f"python:{source}", "cpu")


def test_random_weights_are_the_same_in_every_load(resnet18):
    again = load_target("torchvision:resnet18:random", "cpu")
    batch = images(2)
    np.testing.assert_array_equal(again.activations(batch, "fc"), resnet18.activations(batch, "fc"))
    assert again.identity == "torchvision:resnet18:random#pixels-v1"


def test_identity_follows_the_model_file(tmp_path):
    source = tmp_path / "net.py"
    source.write_text("import torch\ndef build():\n    return torch.nn.Conv2d(3, 2, 3)\n")
    first = load_target(f"python:{source}:build", "cpu").identity
    source.write_text("import torch\ndef build():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    second = load_target(f"python:{source}:build", "cpu").identity
    assert first != second and first.startswith(f"python:{source}:build@")
