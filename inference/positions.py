"""Layers with positions, read as one vector per image by a stated rule.

A layer's output is one of three shapes:

- ``[batch, C, H, W]``: a CNN's feature *map*, ``H * W`` positions of ``C`` units each;
- ``[batch, T, D]``: a ViT's *tokens*, ``T`` positions of ``D`` units; token 0 is the class
  token (CLS) and tokens 1.. are the image patches (as in torchvision's and timm's ViTs without
  register tokens);
- ``[batch, D]``: one vector per image, no positions.

A reading of a layer with positions computes its units at every position (the raw units, or a
basis applied to each position's vector, see :mod:`inference.bases`) and aggregates them per
image with a rule:

``cls``         the class token (token 0) only; tokens only
``mean``        the mean over every position (every token, CLS included; every map location)
``max``         the maximum over every position
``patch-mean``  the mean over the patch tokens (tokens 1..); tokens only
``patch-max``   the maximum over the patch tokens; tokens only

Defaults, when a name gives no rule: raw units and directions read a map by ``mean`` and tokens
by ``cls`` (the LINE paper's reading: CNN layers spatially averaged, ViT layers the CLS token;
a directions basis is linear, so this equals the directions applied to that vector); SAE latents
are read by ``max`` on both, the rule the vision SAE libraries report an image's latent by:
ViT-Prisma ranks images by a latent's maximum over all tokens (its SAE evals, ``amax`` over the
tokens of ``highest_activating_tokens``); saev by the maximum over the patch tokens (``top_k = 1``
in ``saev/scripts/dump.py``, ``patch-max`` here); PatchSAE averages over all tokens (``mean``).

A rule is part of the name a layer is read by: ``LAYER#RULE`` or ``LAYER@BASIS#RULE``
(``conv4@l4-sae#max``, ``encoder.ln#mean``), so what one rule measured is never cached, scored
or compared as another's. Aggregation runs where the model runs, batched on its device: the
activations of every position never leave the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a layer is read, not by the client side
    import torch

    from inference.bases import UnitBasis

POSITIONS_SEPARATOR = "#"
MAP = "map"
TOKENS = "tokens"
POSITION_RULES: dict[str, str] = {
    "cls": "the class token (token 0) only",
    "mean": "the mean over every position (all tokens with CLS; every location of a map)",
    "max": "the maximum over every position",
    "patch-mean": "the mean over the patch tokens (tokens 1 and later)",
    "patch-max": "the maximum over the patch tokens (tokens 1 and later)",
}
TOKEN_ONLY_RULES = ("cls", "patch-mean", "patch-max")
RAW_DEFAULTS = {MAP: "mean", TOKENS: "cls"}
"""How raw units (and directions) of a layer with positions are read unless a name says."""
SAE_DEFAULTS = {MAP: "max", TOKENS: "max"}
"""How SAE latents of a layer with positions are read unless a name says (module docstring)."""
MAX_CHUNK_VALUES = 1 << 25
"""At most this many per-position unit values (128 MiB of float32) exist at once on the device:
a batch whose positions x latents exceed it is encoded a few images at a time."""


class PositionsError(ValueError):
    """A rule that does not exist or does not fit the layer; the message says what does."""


def positions_kind(output: object) -> str | None:
    """``map`` for a ``[B, C, H, W]`` tensor, ``tokens`` for ``[B, T, D]``, else ``None``."""
    dims = getattr(output, "dim", None)
    if dims is None:
        return None
    return {4: MAP, 3: TOKENS}.get(dims())


def split_positions(name: str) -> tuple[str, str | None]:
    """``(rest, rule)`` of ``LAYER[@BASIS]#RULE``; ``(name, None)`` without a rule. An unknown
    rule is a ``PositionsError`` that lists the rules."""
    rest, separator, rule = name.rpartition(POSITIONS_SEPARATOR)
    if not separator or not rest:
        return name, None
    check_rule_name(rule)
    return rest, rule


def check_rule_name(rule: str) -> str:
    """``rule`` when it is one of :data:`POSITION_RULES`, else a ``PositionsError``."""
    if rule not in POSITION_RULES:
        raise PositionsError(
            f"unknown positions rule {rule!r}; use one of: "
            + "; ".join(f"{name} ({meaning})" for name, meaning in POSITION_RULES.items())
        )
    return rule


def with_positions(name: str, rule: str | None) -> str:
    """``name`` read by ``rule`` (``LAYER[@BASIS]#RULE``); ``name`` as it is for ``None``."""
    rest, _old = split_positions(name)
    return rest if rule is None else f"{rest}{POSITIONS_SEPARATOR}{check_rule_name(rule)}"


def default_rule(kind: str | None, basis_kind: str | None) -> str | None:
    """The rule a name without one is read by (module docstring); ``None`` without positions."""
    if kind is None:
        return None
    return (SAE_DEFAULTS if basis_kind == "sae" else RAW_DEFAULTS)[kind]


def rule_problem(rule: str | None, kind: str | None, layer: str, target: str) -> str | None:
    """Why ``layer`` (of ``kind``) cannot be read by ``rule``; ``None`` when it can."""
    if rule is None:
        return None
    if kind is None:
        return (
            f"layer {layer!r} of {target!r} gives one vector per image, so it has no positions "
            f"to aggregate; drop '{POSITIONS_SEPARATOR}{rule}' from the layer name"
        )
    if kind == MAP and rule in TOKEN_ONLY_RULES:
        return (
            f"layer {layer!r} of {target!r} is a feature map (no class token, no patch tokens), "
            f"so it cannot be read by {rule!r}; a map is read by mean or max"
        )
    return None


@dataclass(frozen=True)
class LayerReading:
    """How a request's layer name is measured: the module ``layer``, its ``kind`` of positions,
    the ``rule`` (explicit; ``None`` without positions) and the ``basis`` applied, if any."""

    layer: str
    kind: str | None
    rule: str | None
    basis: UnitBasis | None = None

    @property
    def per_position(self) -> bool:
        """Whether the target itself computes this reading (else it gives the layer's plain
        vector: raw units by the default rule, or a vector layer that a basis encodes after)."""
        if self.kind is None:
            return False
        return self.basis is not None or self.rule != RAW_DEFAULTS[self.kind]

    @property
    def key(self) -> str:
        """The name its values are measured, batched and cached under: the layer itself for
        the plain vector (as ever), else ``LAYER#RULE`` or ``LAYER@<basis key>#RULE``."""
        if not self.per_position:
            return self.layer
        space = self.layer if self.basis is None else f"{self.layer}@{self.basis.key}"
        return f"{space}{POSITIONS_SEPARATOR}{self.rule}"

    def read(self, output: torch.Tensor) -> torch.Tensor:
        """``[batch, units]`` float32 of a layer output on its device: the units at every
        position (the basis applied per position), aggregated by the rule."""
        import torch

        if self.kind is None or self.rule is None:
            raise PositionsError(f"layer {self.layer!r} has no positions to read by a rule")
        with torch.inference_mode():
            x = output.float()
            if x.dim() == 4:  # [B, C, H, W] -> [B, H*W, C], one vector per location
                x = x.flatten(2).transpose(1, 2).contiguous()
            if self.rule == "cls":
                x = x[:, :1]
            elif self.rule.startswith("patch-"):
                x = x[:, 1:]
            if x.shape[1] == 0:
                raise PositionsError(
                    f"layer {self.layer!r} has no patch tokens to read by {self.rule!r}"
                )
            reduce = "max" if self.rule.endswith("max") else "mean"
            if self.basis is None:
                return x.amax(dim=1) if reduce == "max" else x.mean(dim=1)
            positions = x.shape[1]
            step = max(1, MAX_CHUNK_VALUES // max(1, positions * self.basis.size))
            return torch.cat(
                [self.basis.encode_aggregate(chunk, reduce) for chunk in x.split(step)]
            )
