"""A 1,024-unit target for load tests, cheap on a CPU: ``python:bench/wide_toy.py:build``.

Layer ``relu`` has 1,024 units (a random 3x3 convolution on 32x32 images, averaged over space),
so a thousand neurons can be explained at once without a big model.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

UNITS = 1024


def build():
    """The module and its preprocessing (PIL image to a 3x32x32 tensor)."""
    torch.manual_seed(0)
    module = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, UNITS, 3, stride=2), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1)
        )
    )

    def preprocess(image):
        small = np.asarray(image.resize((32, 32)), dtype=np.float32) / 255.0
        return torch.from_numpy(small).permute(2, 0, 1)

    return module, preprocess
