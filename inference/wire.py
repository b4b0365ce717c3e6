"""The inference server's HTTP wire types, shared by the server (``inference.app``,
``inference.service``) and its client (``tools.client``).

Light on purpose: pydantic and numpy only, so importing the client loads no model code. The
field names, descriptions and class names make the server's OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    model_validator,
)

from inference.settings import DEFAULT_LIMITS, MIN_SIDE


def _plain_text(value: str) -> str:
    """Refuse text that cannot be stored or hashed: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "must be valid Unicode text; it contains a lone surrogate (an unpaired \\ud800-\\udfff "
            "escape)"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_plain_text)]
"""A request string: any Unicode text without NUL characters or lone surrogates."""


def _float32_matrix(value: object) -> np.ndarray:
    """Rows of numbers (or an array) as a float32 ``[rows, columns]`` array."""
    try:
        matrix = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"must be rows of numbers of equal length ({error})") from None
    if matrix.ndim == 1 and matrix.size == 0:
        return matrix.reshape(0, 0)
    if matrix.ndim != 2:
        raise ValueError(f"must be rows of numbers, got an array of shape {matrix.shape}")
    return matrix


FloatMatrix = Annotated[
    np.ndarray,
    PlainValidator(_float32_matrix, json_schema_input_type=list[list[float]]),
    PlainSerializer(lambda matrix: matrix.tolist(), return_type=list[list[float]]),
]
"""A float32 matrix in Python, rows of numbers on the wire."""


class ErrorResponse(BaseModel):
    """What every refused or failed request gets."""

    detail: str = Field(description="What is wrong and what is valid.")


class RenderOptions(BaseModel):
    """How to render, besides prompts and seeds: the one spelling of these settings from the
    agent's tools through the client, the server pool, the HTTP app and the service (``None``:
    the server's default for that generator). ``POST /v1/images`` and ``/v1/probe`` take them
    as top-level fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    generator: Text | None = Field(
        default=None, description="Generator name; the server's first if absent."
    )
    width: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        description=f"Image width in pixels: a multiple of 8 from {MIN_SIDE} to the server's "
        f"limit ({DEFAULT_LIMITS.max_side} unless configured); the generator's default if absent.",
    )
    height: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        description=f"Image height in pixels: a multiple of 8 from {MIN_SIDE} to the server's "
        f"limit ({DEFAULT_LIMITS.max_side} unless configured); the generator's default if absent.",
    )
    steps: int | None = Field(
        default=None,
        description=f"Denoising steps, 1 to the server's limit ({DEFAULT_LIMITS.max_steps} unless "
        "configured).",
    )
    guidance: float | None = Field(default=None, description="Guidance scale, 0 to 100.")

    def render_options(self) -> RenderOptions:
        """Just the render options (of a request that carries them among other fields)."""
        if type(self) is RenderOptions:
            return self
        return RenderOptions.model_construct(
            **{name: getattr(self, name) for name in RenderOptions.model_fields}
        )


DEFAULT_RENDER = RenderOptions()
"""Every render option at the server's default."""


class ImagesRequest(RenderOptions):
    """Render one image per (prompt, seed) pair."""

    prompts: list[Text] = Field(description="One prompt per image.")
    seeds: list[int] = Field(description="One seed per image, 0 to 2**63-1.")


class ImageEntry(BaseModel):
    """A rendered (or already stored) image."""

    model_config = ConfigDict(frozen=True)
    id: str
    prompt: str
    seed: int
    cached: bool


class ImagesResponse(BaseModel):
    """The images of a request, in request order."""

    images: list[ImageEntry]


class EditsRequest(BaseModel):
    """Edit stored images with one instruction, one seed per image."""

    model_config = ConfigDict(extra="forbid")
    image_ids: list[str] = Field(description="Ids of stored images (rendered or uploaded).")
    instruction: Text = Field(
        description="What to change, e.g. 'remove the red circle'; at most the server's prompt "
        f"limit ({DEFAULT_LIMITS.max_prompt_chars} characters unless configured)."
    )
    seeds: list[int] = Field(description="One seed per image, 0 to 2**63-1.")
    editor: Text | None = Field(None, description="Editor name; the server's first if absent.")
    steps: int | None = Field(
        None,
        description="Denoising steps, 1 to the server's limit; the editor's default if absent.",
    )
    guidance: float | None = Field(None, description="Guidance scale, 0 to 100.")


class EditEntry(BaseModel):
    """An edited (or already stored) image and the image it was made from."""

    model_config = ConfigDict(frozen=True)
    id: str
    source: str
    seed: int
    cached: bool


class EditsResponse(BaseModel):
    """The edited images of a request, in request order."""

    images: list[EditEntry]


class UploadRequest(BaseModel):
    """Store image files (e.g. a control set's photos) so activations can be read on them."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(description="Base64-encoded image files (PNG, JPEG, ...).")
    names: list[Text] = Field(default_factory=list, description="Optional names, one per image.")


class UploadResponse(BaseModel):
    """The ids of the stored images, in request order."""

    ids: list[str]


class ActivationsRequest(BaseModel):
    """Read a layer of a target on stored images."""

    model_config = ConfigDict(extra="forbid")
    target: Text
    layer: Text = Field(
        description="A layer name, or LAYER@BASIS to read a unit basis (SAE latents, directions) "
        "of that layer; /v1/models lists both."
    )
    image_ids: list[str]
    units: list[int] | None = Field(None, description="Unit indices; all units when absent.")


class ActivationsResponse(BaseModel):
    """A row of activations per image, a column per unit."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True)
    target: str
    layer: str
    units: list[int]
    values: FloatMatrix = Field(alias="activations")  # ``activations`` on the wire

    @model_validator(mode="after")
    def _a_column_per_unit(self) -> ActivationsResponse:
        rows, columns = self.values.shape
        if rows and columns != len(self.units):
            raise ValueError(
                f"activations has {columns} columns for {len(self.units)} units; want one per unit"
            )
        return self


class BasisRequest(BaseModel):
    """Load a unit basis from a path on the server's machine (loopback servers only)."""

    model_config = ConfigDict(extra="forbid")
    spec: Text = Field(
        description="sae:PATH (a SAELens folder or .safetensors file) or directions:PATH (a "
        ".npy or .safetensors K x d_in matrix); an absolute path on the server's machine."
    )


class BasisEntry(BaseModel):
    """A basis the server applies: read layer L in it as the layer ``L@key``."""

    model_config = ConfigDict(frozen=True)
    key: str = Field(description="<kind>-<first 12 hex digits of hash>.")
    kind: str
    architecture: str
    d_in: int = Field(description="The width of the layer it reads.")
    units: int = Field(description="How many latents or directions it has.")
    hash: str = Field(description="SHA-256 of its tensors and settings.")
    source: str


class ProbeRequest(RenderOptions):
    """Render one image per (prompt, seed) pair and read a layer of a target on them."""

    prompts: list[Text] = Field(description="One prompt per image.")
    seeds: list[int] = Field(description="One seed per image, 0 to 2**63-1.")
    target: Text
    layer: Text
    units: list[int] | None = Field(None, description="Unit indices; all units when absent.")


class ProbeResponse(ActivationsResponse):
    """The images of a probe (as POST /v1/images gives them) and their activations (as POST
    /v1/activations gives them), in request order."""

    images: list[ImageEntry]
