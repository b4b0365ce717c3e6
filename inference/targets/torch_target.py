"""Target models built on ``torch.nn.Module``: torchvision, Places365 checkpoints, user factories.

A layer is any named submodule whose output is a tensor. Its activations are read with a forward
hook and reduced to one value per unit: ``[B, C, H, W]`` outputs are averaged over space (CNNs),
``[B, tokens, D]`` outputs give the first (CLS) token (ViTs), ``[B, D]`` outputs are taken as they
are. Another rule (a map's maximum, the mean over a ViT's tokens), or a basis applied at every
position, is computed in the same hook on the model's device (:meth:`TorchTarget.read`,
:mod:`inference.positions`). A module called several times in one forward pass (torchvision's
shared ReLUs) reports its last call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from PIL import Image

from inference.pixels import image_of, pixels_of
from inference.positions import LayerReading, positions_kind
from inference.protocols import BackendSpecError, LayerInfo, UnknownLayerError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Preprocess = Callable[[Image.Image], torch.Tensor]
"""A user's preprocessing: one RGB PIL image into the model's ``[3, H, W]`` input tensor."""
PixelPreprocess = Callable[[torch.Tensor], torch.Tensor]
"""Batched preprocessing on the model's device: a uint8 ``[batch, 3, H, W]`` tensor of pixels
into the model's float input (resize, centre crop, normalise as tensor operations)."""
PIXEL_PATH_VERSION = "pixels-v1"
"""Part of the identity of targets preprocessed as tensors (bump when that preprocessing
changes): their activations differ slightly from PIL preprocessing's, so they are cached apart."""


def imagenet_preprocess() -> PixelPreprocess:
    """Resize to 256 (bilinear, antialiased), centre-crop 224, ImageNet-normalise, as batched
    tensor operations: the standard for models without preprocessing of their own."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def reduce_to_units(output: object) -> torch.Tensor | None:
    """Reduce a layer output to ``[batch, units]``; ``None`` when it has no unit axis we know."""
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return None
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output[:, 0, :]
    if output.dim() == 2:
        return output
    return None


class _StopForward(Exception):
    """Raised from a hook to skip the rest of the network once the wanted layer has run."""


class TorchTarget:
    """A ``TargetModel`` over any ``torch.nn.Module`` with its preprocessing.

    Preprocessing is batched tensor work on the model's device (``pixel_preprocess``: the
    weights' own transforms, else :func:`imagenet_preprocess`) unless a user module brings its
    own PIL ``preprocess``, which then runs on a pool of CPU threads, image by image. PIL images
    and pixel tensors go through the same path, so an image measured from its PNG and from the
    generator's pixels gives the same activations.
    """

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        preprocess: Preprocess | None,
        device: str,
        identity: str | None = None,
        pixel_preprocess: PixelPreprocess | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.module = module.eval().to(device)
        self.preprocess = preprocess
        self.pixel_preprocess = None if preprocess else pixel_preprocess or imagenet_preprocess()
        self._cpu_pool = ThreadPoolExecutor(
            min(8, os.cpu_count() or 1), thread_name_prefix="line-preprocess"
        )
        base = identity or name
        self.identity = base if preprocess else f"{base}#{PIXEL_PATH_VERSION}"
        self._layers, self._calls = self._discover_layers()

    def _discover_layers(self) -> tuple[dict[str, LayerInfo], dict[str, int]]:
        """Run one grey image through the model and record every layer's unit count."""
        units: dict[str, int] = {}
        kinds: dict[str, str | None] = {}
        calls: dict[str, int] = {}
        handles = []

        def make_hook(layer_name: str) -> Callable[[torch.nn.Module, Any, object], None]:
            def hook(_module: torch.nn.Module, _inputs: Any, output: object) -> None:
                reduced = reduce_to_units(output)
                calls[layer_name] = calls.get(layer_name, 0) + 1
                if reduced is not None:
                    units[layer_name] = int(reduced.shape[1])
                    kinds[layer_name] = positions_kind(output)
                else:
                    units.pop(layer_name, None)

            return hook

        for layer_name, submodule in self.module.named_modules():
            if layer_name:
                handles.append(submodule.register_forward_hook(make_hook(layer_name)))
        try:
            probe = self.preprocess_batch([Image.new("RGB", (224, 224), (128, 128, 128))])
            with torch.inference_mode():
                self.module(probe)
        finally:
            for handle in handles:
                handle.remove()
        order = [name for name, _ in self.module.named_modules() if name in units]
        return {name: LayerInfo(name, units[name], kinds[name]) for name in order}, calls

    def layers(self) -> list[LayerInfo]:
        """Every readable layer with its unit count, in module order."""
        return list(self._layers.values())

    def layer_info(self, layer: str) -> LayerInfo:
        """The layer's info, or an error that lists the valid names."""
        if layer not in self._layers:
            raise UnknownLayerError(
                f"target {self.name!r} has no layer {layer!r}; valid layers: "
                + ", ".join(self._layers)
            )
        return self._layers[layer]

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess PIL images into one batch tensor on the model's device."""
        if self.preprocess is not None:  # a user's PIL code: on a pool of CPU threads
            preprocess = self.preprocess
            tensors = list(
                self._cpu_pool.map(lambda image: preprocess(image.convert("RGB")), images)
            )
            return torch.stack(tensors).to(self.device)
        return self.preprocess_pixels([pixels_of(image) for image in images])

    def preprocess_pixels(self, pixels: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Preprocess uint8 ``[3, H, W]`` pixel tensors (a list, or one ``[batch, 3, H, W]``
        tensor) into one batch on the model's device; images of one size are transformed
        together."""
        if self.pixel_preprocess is None:
            return self.preprocess_batch([image_of(p) for p in pixels])  # a user's PIL code
        if isinstance(pixels, torch.Tensor):
            return self.pixel_preprocess(pixels.to(self.device))
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(pixels):
            by_size.setdefault(tuple(image.shape), []).append(index)
        rows: list[torch.Tensor | None] = [None] * len(pixels)
        for indices in by_size.values():
            batch = torch.stack([pixels[i] for i in indices]).to(self.device)
            for index, row in zip(indices, self.pixel_preprocess(batch), strict=True):
                rows[index] = row
        return torch.stack([row for row in rows if row is not None])

    def forward_layer(
        self,
        batch: torch.Tensor,
        layer: str,
        reduce: Callable[[torch.Tensor], torch.Tensor | None] = reduce_to_units,
    ) -> torch.Tensor:
        """Run the model on a preprocessed batch; the layer's ``[batch, units]`` tensor, its
        output reduced on the device by ``reduce`` (by default :func:`reduce_to_units`)."""
        self.layer_info(layer)
        captured: dict[str, torch.Tensor | None] = {}
        stop_early = self._calls.get(layer, 0) == 1

        def hook(_module: torch.nn.Module, _inputs: Any, output: object) -> None:
            captured["units"] = None  # not a float tensor with a unit axis
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                captured["units"] = reduce(output)
            if stop_early:
                raise _StopForward

        handle = self.module.get_submodule(layer).register_forward_hook(hook)
        try:
            with torch.inference_mode():
                self.module(batch)
        except _StopForward:
            pass
        finally:
            handle.remove()
        units = captured["units"]
        if units is None:  # its output is no longer a float tensor with a unit axis
            raise RuntimeError(f"layer {layer!r} of target {self.name!r} gave no unit values")
        return units

    def activations(self, images: Sequence[Image.Image], layer: str) -> np.ndarray:
        """The layer's activations for RGB images as a float32 ``[batch, units]`` array."""
        self.layer_info(layer)
        if not images:
            return np.zeros((0, self._layers[layer].units), dtype=np.float32)
        units = self.forward_layer(self.preprocess_batch(images), layer)
        return units.float().cpu().numpy().astype(np.float32, copy=False)

    def activations_from_pixels(self, pixels: torch.Tensor, layer: str) -> np.ndarray:
        """The layer's activations for a uint8 ``[batch, 3, H, W]`` pixel tensor (on any
        device; a generator's output stays on the model's device)."""
        self.layer_info(layer)
        units = self.forward_layer(self.preprocess_pixels(pixels), layer)
        return units.float().cpu().numpy().astype(np.float32, copy=False)

    def read(self, images: Sequence[Image.Image], reading: LayerReading) -> np.ndarray:
        """A reading of a layer with positions (a rule, a basis at every position) on RGB
        images, computed on the model's device: float32 ``[batch, units]``."""
        if not images:
            return np.zeros((0, self._reading_units(reading)), dtype=np.float32)
        units = self.forward_layer(self.preprocess_batch(images), reading.layer, reading.read)
        return units.cpu().numpy().astype(np.float32, copy=False)

    def read_pixels(self, pixels: torch.Tensor, reading: LayerReading) -> np.ndarray:
        """:meth:`read` on a uint8 ``[batch, 3, H, W]`` pixel tensor."""
        self.layer_info(reading.layer)
        units = self.forward_layer(self.preprocess_pixels(pixels), reading.layer, reading.read)
        return units.cpu().numpy().astype(np.float32, copy=False)

    def _reading_units(self, reading: LayerReading) -> int:
        info = self.layer_info(reading.layer)
        return info.units if reading.basis is None else reading.basis.size


def create_torchvision_target(
    rest: str, device: str, trust_checkpoints: bool = False
) -> TorchTarget:
    """``torchvision:<arch>[:<weights>]``; weights default to ``DEFAULT``, ``random`` for none."""
    import torchvision
    from torchvision import models

    arch, _, weights_name = rest.partition(":")
    weights_name = weights_name or "DEFAULT"
    available = models.list_models(module=models)
    if arch not in available:
        raise BackendSpecError(
            f"torchvision has no classification model {arch!r}; choose one of: "
            + ", ".join(available)
        )
    if weights_name == "random":
        # a fixed random initialisation: the same weights in every process, so cached
        # activations of an earlier server stay valid
        with torch_seed(RANDOM_WEIGHTS_SEED):
            module = models.get_model(arch, weights=None)
        return TorchTarget(f"torchvision:{rest}", module, None, device)
    weights_enum = models.get_model_weights(arch)
    valid = ["DEFAULT", *weights_enum.__members__, "random"]
    if weights_name not in valid:
        raise BackendSpecError(
            f"torchvision model {arch!r} has no weights {weights_name!r}; use one of: "
            + ", ".join(valid)
        )
    weights = weights_enum[weights_name]
    try:
        module = models.get_model(arch, weights=weights)
    except Exception as error:
        raise BackendSpecError(
            f"could not load weights {weights} for {arch!r} ({error}). They download into "
            f"$TORCH_HOME/hub/checkpoints on first use; copy the file {weights.url} there on a "
            f"machine without internet, or use 'torchvision:{arch}:random'"
        ) from error
    del torchvision
    return TorchTarget(
        f"torchvision:{rest}", module, None, device, pixel_preprocess=weights.transforms()
    )


RANDOM_WEIGHTS_SEED = 0


class torch_seed:
    """Seed torch's global generator inside a block, restoring its state afterwards."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        torch.random.set_rng_state(self._state)


def file_fingerprint(path: Path) -> str:
    """A short content hash of a file (checkpoints, model code), for cache keys."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_checkpoint(path: Path, trust_checkpoints: bool) -> Any:
    """``torch.load`` that only unpickles plain tensors and containers unless trusted."""
    if not path.is_file():
        raise BackendSpecError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoints)
    except pickle.UnpicklingError as error:
        raise BackendSpecError(
            f"checkpoint {str(path)!r} holds Python objects beyond tensors, which LINE does not "
            "unpickle by default because unpickling runs arbitrary code. If you trust the file, "
            f"pass --trust-checkpoints. ({error})"
        ) from error


RESNET_BLOCKS = {
    (2, 2, 2, 2, False): "resnet18",
    (3, 4, 6, 3, False): "resnet34",
    (3, 4, 6, 3, True): "resnet50",
    (3, 4, 23, 3, True): "resnet101",
    (3, 8, 36, 3, True): "resnet152",
}


def resnet_arch_from_state_dict(state_dict: dict[str, Any]) -> str:
    """Name the torchvision ResNet a state dict fits, from its block counts."""
    counts = []
    for stage in range(1, 5):
        blocks = {key.split(".")[1] for key in state_dict if key.startswith(f"layer{stage}.")}
        counts.append(len(blocks))
    bottleneck = any(".conv3." in key for key in state_dict)
    key = (*counts, bottleneck)
    if key not in RESNET_BLOCKS:
        raise BackendSpecError(
            f"the checkpoint is not a ResNet LINE knows (blocks per stage {counts}); supported: "
            + ", ".join(RESNET_BLOCKS.values())
        )
    return RESNET_BLOCKS[key]


def create_places365_target(rest: str, device: str, trust_checkpoints: bool = False) -> TorchTarget:
    """``places365:<path>``: a CSAIL Places365 ResNet checkpoint (``module.`` prefixes stripped)."""
    from torchvision import models

    if not rest:
        raise BackendSpecError(
            "places365 needs a checkpoint path, e.g. 'places365:resnet18_places365.pth.tar'"
        )
    checkpoint = load_checkpoint(Path(rest).expanduser(), trust_checkpoints)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise BackendSpecError(f"{rest!r} holds no state_dict of tensors")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    arch = resnet_arch_from_state_dict(state_dict)
    module = models.get_model(arch, weights=None, num_classes=365)
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        raise BackendSpecError(f"{rest!r} does not fit {arch} with 365 classes: {error}") from error
    identity = f"places365:{rest}@{file_fingerprint(Path(rest).expanduser())}"
    return TorchTarget(f"places365:{rest}", module, None, device, identity)


def create_python_target(rest: str, device: str, trust_checkpoints: bool = False) -> TorchTarget:
    """``python:<file.py>:<factory>``: a user's module, optionally with its preprocessing."""
    path_text, sep, factory_name = rest.rpartition(":")
    if not sep or not path_text or not factory_name:
        raise BackendSpecError(
            f"'python:{rest}' must name a file and a factory, e.g. 'python:my_model.py:build'"
        )
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise BackendSpecError(f"python target file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"line_user_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise BackendSpecError(f"python target file {str(path)!r} cannot be imported as a module")
    module_code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module_code)
    factory = getattr(module_code, factory_name, None)
    if not callable(factory):
        names = [name for name in vars(module_code) if callable(getattr(module_code, name))]
        raise BackendSpecError(
            f"{str(path)!r} has no factory {factory_name!r}; callables there: " + ", ".join(names)
        )
    made = factory()
    module, preprocess = made if isinstance(made, tuple) else (made, None)
    if not isinstance(module, torch.nn.Module):
        raise BackendSpecError(
            f"factory {factory_name!r} returned {type(module).__name__}; it must return a "
            "torch.nn.Module or a (module, preprocess) tuple"
        )
    identity = f"python:{rest}@{file_fingerprint(path)}"
    return TorchTarget(f"python:{rest}", module, preprocess, device, identity)
