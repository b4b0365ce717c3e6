"""``learned:shapes``: a small CNN trained on ``procedural:shapes`` scenes to predict attributes.

Unlike ``planted:shapes``, nobody wrote down what its units compute: they are learned, so they
are distributed, partly selective and often polysemantic, like a real network's. Their reference
concepts come from dissection (:mod:`toyworld.dissection`), never from the weights.

Architecture (named layers, each readable by LINE): ``conv1`` (16 units) -> 2x2 max-pool ->
``conv2`` (32) -> pool -> ``conv3`` (64) -> pool -> ``conv4`` (128) -> spatial mean -> ``head``
(one logit per attribute of :data:`toyworld.probes.ATTRIBUTES`). Convolutions are 3x3
with a ReLU. Input: the image resized to 64x64 (box filter), scaled to ``(x / 255 - 0.5) / 0.25``.
The model sees pixels only.

The shipped weights (``learned_shapes.safetensors``, about 0.4 MB) are the output of
``line toyworld train`` with its defaults; their held-out figures are in the file's metadata
(``line toyworld train --help`` and the README).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as functional
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from sklearn.metrics import roc_auc_score
from torch import nn

from inference.protocols import BackendSpecError
from inference.targets.torch_target import TorchTarget, file_fingerprint
from toyworld.defaults import TrainConfig
from toyworld.probes import ATTRIBUTES, Probe, attribute_matrix, probe_set

TARGET_NAMES = ("shapes",)
INPUT_SIZE = 64
WEIGHTS_PATH = Path(__file__).with_name("learned_shapes.safetensors")
LAYER_WIDTHS = {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 128}
TRAIN_PROBE_SEED = 1000
"""Training scenes use probe seed ``TRAIN_PROBE_SEED + seed``; held-out scenes the next stream."""
HELD_OUT_PROBE_SEED = 2000


class ConvReLU(nn.Conv2d):
    """A 3x3 convolution followed by a ReLU, as one named layer (its output is post-ReLU)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """ReLU of the convolution."""
        return functional.relu(super().forward(input))


class LearnedShapesNet(nn.Module):
    """The ``learned:shapes`` network (module docstring)."""

    def __init__(self, outputs: int = len(ATTRIBUTES)) -> None:
        super().__init__()
        self.conv1 = ConvReLU(3, LAYER_WIDTHS["conv1"], 3, padding=1)
        self.conv2 = ConvReLU(LAYER_WIDTHS["conv1"], LAYER_WIDTHS["conv2"], 3, padding=1)
        self.conv3 = ConvReLU(LAYER_WIDTHS["conv2"], LAYER_WIDTHS["conv3"], 3, padding=1)
        self.conv4 = ConvReLU(LAYER_WIDTHS["conv3"], LAYER_WIDTHS["conv4"], 3, padding=1)
        self.head = nn.Linear(LAYER_WIDTHS["conv4"], outputs)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Attribute logits ``[batch, outputs]`` for preprocessed images ``[batch, 3, 64, 64]``."""
        x = functional.max_pool2d(self.conv1(pixels), 2)
        x = functional.max_pool2d(self.conv2(x), 2)
        x = functional.max_pool2d(self.conv3(x), 2)
        x = self.conv4(x).mean(dim=(2, 3))
        return self.head(x)


def image_to_uint8(image: Image.Image) -> np.ndarray:
    """An image as the ``[3, 64, 64]`` uint8 array the network reads (box-filter resize)."""
    small = image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1).copy()


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, 64, 64]`` pixels to the network's input scale."""
    return (pixels.float() / 255.0 - 0.5) / 0.25


def preprocess(image: Image.Image) -> torch.Tensor:
    """One image to the network's ``[3, 64, 64]`` float input (the target's preprocessing)."""
    return normalise(torch.from_numpy(image_to_uint8(image)))


def load_weights(path: Path) -> tuple[LearnedShapesNet, dict[str, str]]:
    """The network with the weights of ``path`` and the file's metadata; a clear error when the
    file is missing, corrupt or made for another architecture."""
    retrain = "rebuild it with `line toyworld train --out PATH` (or reinstall LINE)"
    if not path.is_file():
        raise BackendSpecError(f"the learned:shapes weights file {path} does not exist; {retrain}")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as stream:
            metadata = dict(stream.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise BackendSpecError(
            f"the learned:shapes weights file {path} is not a readable safetensors file "
            f"({error}); {retrain}"
        ) from error
    model = LearnedShapesNet()
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    if found != expected:
        raise BackendSpecError(
            f"the learned:shapes weights file {path} does not fit the network: expected tensors "
            f"{expected}, found {found}; {retrain}"
        )
    if json.loads(metadata.get("attributes", "[]")) != list(ATTRIBUTES):
        raise BackendSpecError(
            f"the learned:shapes weights file {path} was trained for other attributes than this "
            f"version's {len(ATTRIBUTES)}; {retrain}"
        )
    model.load_state_dict(state)
    return model.eval(), metadata


def create_learned_target(
    rest: str, device: str, trust_checkpoints: bool = False, weights: Path | None = None
) -> TorchTarget:
    """Factory for ``learned:<name>`` specs: the shipped network as a torch target."""
    if rest not in TARGET_NAMES:
        raise BackendSpecError(
            f"unknown learned target {rest!r}; valid: "
            + ", ".join(f"'learned:{name}'" for name in TARGET_NAMES)
        )
    path = weights or WEIGHTS_PATH
    model, _metadata = load_weights(path)
    identity = f"learned:{rest}@{file_fingerprint(path)}"
    return TorchTarget(f"learned:{rest}", model, preprocess, device, identity)


# ----- training ------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a training run did: the loss per epoch and the held-out figures."""

    config: TrainConfig
    losses: list[float] = field(default_factory=list)
    held_out_accuracy: float = float("nan")
    """Mean over attributes of the share of held-out scenes whose attribute is predicted right."""
    held_out_auc: float = float("nan")
    """Macro ROC AUC over attributes of the held-out predictions."""
    seconds: float = 0.0

    def metadata(self) -> dict[str, str]:
        """String metadata stored in the weights file."""
        return {
            "attributes": json.dumps(list(ATTRIBUTES)),
            "config": json.dumps(asdict(self.config)),
            "losses": json.dumps([round(loss, 6) for loss in self.losses]),
            "held_out_accuracy": f"{self.held_out_accuracy:.4f}",
            "held_out_auc": f"{self.held_out_auc:.4f}",
        }


def probe_tensors(probes: list[Probe]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered uint8 inputs ``[n, 3, 64, 64]`` and 0/1 attribute targets ``[n, attributes]``."""
    pixels = np.stack([image_to_uint8(probe.render()) for probe in probes])
    return torch.from_numpy(pixels), torch.from_numpy(attribute_matrix(probes))


def evaluate(
    model: LearnedShapesNet, pixels: torch.Tensor, targets: torch.Tensor
) -> tuple[float, float]:
    """(mean per-attribute accuracy, macro ROC AUC) of a model on rendered scenes."""
    with torch.inference_mode():
        logits = torch.cat([model(normalise(chunk)) for chunk in pixels.split(256)])
    truth = targets.numpy()
    accuracy = float(((logits.numpy() > 0) == (truth > 0.5)).mean())
    present = [c for c in range(truth.shape[1]) if 0 < truth[:, c].sum() < len(truth)]
    auc = float(roc_auc_score(truth[:, present], logits.numpy()[:, present], average="macro"))
    return accuracy, auc


def train_learned_shapes(
    config: TrainConfig, progress: Callable[[str], None] | None = None
) -> tuple[LearnedShapesNet, TrainResult]:
    """Train the network from scratch, reproducibly for a config on one machine."""
    started = time.monotonic()
    say = progress or (lambda _text: None)
    torch.manual_seed(config.seed)
    say(f"rendering {config.train_scenes} training and {config.held_out_scenes} held-out scenes")
    train_x, train_y = probe_tensors(probe_set(config.train_scenes, TRAIN_PROBE_SEED + config.seed))
    test_x, test_y = probe_tensors(
        probe_set(config.held_out_scenes, HELD_OUT_PROBE_SEED + config.seed)
    )
    model = LearnedShapesNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps_per_epoch = max(1, -(-len(train_x) // config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, config.learning_rate, total_steps=config.epochs * steps_per_epoch
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    result = TrainResult(config)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=shuffle)
        total = 0.0
        for batch in order.split(config.batch_size):
            logits = model(normalise(train_x[batch]))
            loss = functional.binary_cross_entropy_with_logits(logits, train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        result.losses.append(total / len(train_x))
        say(f"epoch {epoch + 1}/{config.epochs}: loss {result.losses[-1]:.4f}")
    model.eval()
    result.held_out_accuracy, result.held_out_auc = evaluate(model, test_x, test_y)
    result.seconds = time.monotonic() - started
    say(
        f"held-out: accuracy {result.held_out_accuracy:.4f}, macro AUC {result.held_out_auc:.4f} "
        f"({result.seconds:.0f} s)"
    )
    return model, result


def save_weights(model: LearnedShapesNet, result: TrainResult, path: Path) -> None:
    """Write the weights and the training metadata as one safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata=result.metadata())
