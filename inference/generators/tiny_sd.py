"""``tiny-sd`` and ``tiny-pix2pix``: tiny random-weight Stable Diffusion pipelines (text-to-image
and InstructPix2Pix editing) built offline from configs.

It exists for tests, benchmarks and smoke runs on machines without model weights. Its images are
noise: the weights are random, so nothing it renders depicts the prompt. It runs the real diffusers
code path (tokenizer, text encoder, UNet, scheduler, VAE), built once into a cache folder and then
loaded with ``AutoPipelineForText2Image`` like any downloaded model.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference.generators.diffusers_editor import DiffusersEditor, load_editing_pipeline
from inference.generators.diffusers_generator import (
    DiffusersGenerator,
    load_diffusers_pipeline,
)
from inference.protocols import BackendSpecError, EditSettings, GeneratorOptions, RenderSettings
from inference.store import default_cache_dir

TINY_SD_VERSION = "v1"
TINY_SD_SIZE = 64


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet: every byte is one symbol, with and without ``</w>``."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    symbols = [chr(code) for code in codes]
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    return {token: index for index, token in enumerate(tokens)}


def _tiny_components(seed: int, unet_in_channels: int) -> dict[str, Any]:
    """Seeded random-weight Stable Diffusion parts: tokenizer, text encoder, UNet (taking
    ``unet_in_channels`` latent channels: 4 to render, 8 for InstructPix2Pix), VAE, scheduler."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch, "vocab.json")
        merges_file = Path(scratch, "merges.txt")
        vocab = _byte_level_vocab()
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=TINY_SD_SIZE // 2,
        in_channels=unet_in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=TINY_SD_SIZE,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def build_tiny_sd(folder: Path, seed: int = 0) -> None:
    """Construct the tiny text-to-image pipeline with seeded random weights, save to ``folder``."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(**_tiny_components(seed, unet_in_channels=4))
    # mypy reads diffusers' top level as its placeholder classes, which lack save_pretrained
    pipeline.save_pretrained(folder)  # type: ignore[attr-defined]


def build_tiny_pix2pix(folder: Path, seed: int = 0) -> None:
    """Construct a tiny InstructPix2Pix editing pipeline with seeded random weights."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipeline = StableDiffusionInstructPix2PixPipeline(**_tiny_components(seed, unet_in_channels=8))
    pipeline.save_pretrained(folder)  # type: ignore[attr-defined]


def _ensure_built(name: str, build: Callable[[Path], None], cache_dir: Path | None) -> Path:
    """A tiny pipeline's cache folder, built first (atomically) if it is not there yet."""
    folder = (cache_dir or default_cache_dir()) / name
    if (folder / "model_index.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=folder.parent))
    build(staging)
    try:
        staging.rename(folder)
    except OSError:  # another process built it first
        if not (folder / "model_index.json").exists():
            raise
    return folder


def ensure_tiny_sd(cache_dir: Path | None = None) -> Path:
    """Return the tiny pipeline's folder, building it first if it is not cached yet."""
    return _ensure_built(f"tiny-sd-{TINY_SD_VERSION}", build_tiny_sd, cache_dir)


def ensure_tiny_pix2pix(cache_dir: Path | None = None) -> Path:
    """Return the tiny editing pipeline's folder, building it first if it is not cached yet."""
    return _ensure_built(f"tiny-pix2pix-{TINY_SD_VERSION}", build_tiny_pix2pix, cache_dir)


def create_tiny_sd_generator(
    rest: str, device: str, options: GeneratorOptions
) -> DiffusersGenerator:
    """The ``tiny-sd`` generator: 64x64, one step, no guidance unless the options say otherwise."""
    if rest:
        raise BackendSpecError(f"'tiny-sd' takes no arguments, got 'tiny-sd:{rest}'")
    dtype = options.dtype or "float32"
    pipeline = load_diffusers_pipeline(ensure_tiny_sd(), device, dtype)
    defaults = RenderSettings(
        width=options.width or TINY_SD_SIZE,
        height=options.height or TINY_SD_SIZE,
        steps=options.steps or 1,
        guidance=0.0 if options.guidance is None else options.guidance,
    )
    generator = DiffusersGenerator("tiny-sd", pipeline, device, dtype, defaults)
    generator.identity = f"tiny-sd-{TINY_SD_VERSION}:{dtype}"
    return generator


def create_tiny_pix2pix_editor(
    rest: str, device: str, options: GeneratorOptions
) -> DiffusersEditor:
    """The ``tiny-pix2pix`` editor (InstructPix2Pix, random weights: its edits are noise): one
    step, no guidance unless the options say otherwise."""
    if rest:
        raise BackendSpecError(f"'tiny-pix2pix' takes no arguments, got 'tiny-pix2pix:{rest}'")
    dtype = options.dtype or "float32"
    pipeline, kind = load_editing_pipeline(ensure_tiny_pix2pix(), device, dtype)
    defaults = EditSettings(
        steps=options.steps or 1, guidance=0.0 if options.guidance is None else options.guidance
    )
    editor = DiffusersEditor("tiny-pix2pix", pipeline, kind, device, dtype, defaults)
    editor.identity = f"tiny-pix2pix-{TINY_SD_VERSION}:{dtype}:{kind}"
    return editor
