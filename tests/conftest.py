"""Shared fixtures: offline models built once per session, in a temporary LINE cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def line_cache(tmp_path_factory):
    """Keep tiny-sd and stores out of the user's home folder."""
    folder = tmp_path_factory.mktemp("line-cache")
    previous = os.environ.get("LINE_CACHE")
    os.environ["LINE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LINE_CACHE", None)
    else:
        os.environ["LINE_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_sd(line_cache):
    """The offline tiny Stable Diffusion generator on the CPU."""
    from tools.registry import load_generator

    return load_generator("tiny-sd", "cpu")


@pytest.fixture(scope="session")
def resnet18(line_cache):
    """A random-weight ResNet-18 target."""
    from tools.registry import load_target

    return load_target("torchvision:resnet18:random", "cpu")
