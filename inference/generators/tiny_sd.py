"""``tiny-sd``: a tiny random-weight Stable Diffusion pipeline built offline from configs.

It exists for tests, benchmarks and smoke runs on machines without model weights. Its images are
noise: the weights are random, so nothing it renders depicts the prompt. It runs the real diffusers
code path (tokenizer, text encoder, UNet, scheduler, VAE), built once into a cache folder and then
loaded with ``AutoPipelineForText2Image`` like any downloaded model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from inference.generators.diffusers_generator import (
    DiffusersGenerator,
    load_diffusers_pipeline,
)
from inference.protocols import BackendSpecError, GeneratorOptions, RenderSettings
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


def build_tiny_sd(folder: Path, seed: int = 0) -> None:
    """Construct the tiny pipeline with seeded random weights and save it to ``folder``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
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
        in_channels=4,
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
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # mypy reads diffusers' top level as its placeholder classes, which lack save_pretrained
    pipeline.save_pretrained(folder)  # type: ignore[attr-defined]


def ensure_tiny_sd(cache_dir: Path | None = None) -> Path:
    """Return the tiny pipeline's folder, building it first if it is not cached yet."""
    folder = (cache_dir or default_cache_dir()) / f"tiny-sd-{TINY_SD_VERSION}"
    if (folder / "model_index.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="tiny-sd-", dir=folder.parent))
    build_tiny_sd(staging)
    try:
        staging.rename(folder)
    except OSError:  # another process built it first
        if not (folder / "model_index.json").exists():
            raise
    return folder


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
