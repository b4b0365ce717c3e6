"""Images as pixel tensors: what passes between a generator and a target on one device.

A pixel tensor is uint8 ``[3, H, W]`` (or ``[batch, 3, H, W]``), the same values a stored PNG
holds, so an activation read from a generator's pixels equals one read from the stored image.
torch is imported where pixels are made, not on import: ``line run`` against a server imports
the server's modules without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def pixels_of(image: Image.Image) -> torch.Tensor:
    """An RGB image as a uint8 ``[3, H, W]`` tensor (on the CPU)."""
    import torch  # not at the top: the client side (runner, evaluations) never needs torch

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def image_of(pixels: torch.Tensor) -> Image.Image:
    """A uint8 ``[3, H, W]`` tensor (on any device) as an RGB PIL image."""
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), mode="RGB")
