"""Unit bases: explain a layer's SAE latents, or directions in it, instead of its raw units.

A basis maps a layer vector ``x`` (``d_in`` numbers) to ``K`` units:

- ``sae:PATH``: the latents of a sparse autoencoder in SAELens's on-disk format, a folder with
  ``cfg.json`` and ``sae_weights.safetensors`` (what ``save_model``, ``save_inference_model`` and
  SAELens's training checkpoints write, SAELens 5 and 6), or a plain ``.safetensors`` file with the
  same tensors (``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``b_dec [d_in]``, ``W_dec [d_sae,
  d_in]``, ``threshold [d_sae]`` for JumpReLU). Units equal SAELens's ``encode()``: ``x`` is
  normalised as ``normalize_activations`` says, ``b_dec`` is subtracted (``apply_b_dec_to_input``),
  then ``pre = x @ W_enc + b_enc`` goes through the architecture's nonlinearity: ``standard`` ReLU,
  ``jumprelu`` (ReLU where ``pre > threshold``, else 0; SAELens saves BatchTopK SAEs this way) or
  ``topk`` (ReLU of the ``k`` largest, the rest 0; with ``rescale_acts_by_decoder_norm``, ``pre``
  is first multiplied by the norms of ``W_dec``'s rows, as SAELens does). A plain file is
  ``standard``, or ``jumprelu`` when it holds ``threshold``. Every ``cfg.json`` field that changes
  ``encode()`` is honoured or refused by name, and so is a field LINE does not know
  (:data:`SAE_INERT_FIELDS` lists those known not to matter). Weights of any dtype are read as
  float32 and units are computed in float32.
- ``directions:PATH``: the rows of a ``K x d_in`` matrix, a ``.npy`` file or a ``.safetensors``
  file with ``directions`` and an optional ``mean [d_in]``: unit ``k`` is ``(x - mean) . row_k``.

A basis is identified by a SHA-256 of its tensors and settings; its key is ``<kind>-<12 hex>``.
Layer ``L`` read in basis ``B`` is the unit space ``L@B`` (:func:`unit_space`), optionally with a
positions rule, ``L@B#RULE`` (:mod:`inference.positions`): that is the layer name every request,
run folder and cache uses, so nothing measured in one basis is mistaken for another. Servers hold
bases in a :class:`BasisRegistry`. A basis on a layer with positions (a CNN map, ViT tokens) is
applied to every position's vector on the target's device and aggregated per image; on a layer
of plain vectors it encodes the cached vectors as one batched matrix product.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError

from inference.positions import POSITIONS_SEPARATOR, PositionsError, split_positions

if TYPE_CHECKING:  # torch is imported where a basis is applied or written (not by the runner)
    import torch

BASIS_KINDS = ("sae", "directions")
SAE_ARCHITECTURES = ("standard", "jumprelu", "topk")
"""What ``cfg.json``'s ``architecture`` may say (``relu`` is read as ``standard``)."""
REFUSED_ARCHITECTURES = {
    "gated": "its gated encoder (r_mag, b_gate, b_mag) is not implemented here",
    "abstopk": "its top-k by absolute value is not implemented here",
    "batchtopk": "this is a BatchTopK training checkpoint; save it with SAELens's "
    "save_inference_model, which writes it as a jumprelu SAE that LINE reads",
    "matryoshka_batchtopk": "this is a Matryoshka BatchTopK training checkpoint; save it with "
    "SAELens's save_inference_model, which writes it as a jumprelu SAE that LINE reads",
    "matching_pursuit": "its iterative matching-pursuit encoder is not implemented here",
    "temporal": "its attention over earlier tokens is not implemented here",
    "transcoder": "a transcoder maps one layer to another; LINE explains one layer's units",
    "skip_transcoder": "a transcoder maps one layer to another; LINE explains one layer's units",
    "jumprelu_transcoder": "a transcoder maps one layer to another; LINE explains one layer's "
    "units",
    "jumprelu_skip_transcoder": "a transcoder maps one layer to another; LINE explains one "
    "layer's units",
}
"""SAELens architectures LINE refuses, each with why."""
NORMALISATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
"""SAELens's ``normalize_activations`` values LINE reads. ``expected_average_only_in`` scales
inputs by a constant found in training, which SAELens folds into the weights when it saves: at
inference it changes nothing, as here (SAELens 5's ``true`` means it, ``false`` means ``none``).
``covariance_whitening`` is refused: see :func:`_normalisation`."""
SAE_ENCODE_FIELDS = frozenset(
    {
        "architecture",
        "k",
        "rescale_acts_by_decoder_norm",
        "apply_b_dec_to_input",
        "normalize_activations",
        "reshape_activations",
        "activation_fn",
        "activation_fn_str",
        "activation_fn_kwargs",
        "hook_head_index",
        "hook_point_head_index",
        "hook_name",
        "hook_point",
        "d_in",
        "d_sae",
        "metadata",
        "sae_lens_version",
    }
)
"""``cfg.json`` fields LINE reads (honoured, checked, or refused when they change encode())."""
SAE_INERT_FIELDS = frozenset(
    {
        # how SAELens loads it, and where it came from (SAELens 5 top level, SAELens 6 metadata)
        "dtype",
        "device",
        "model_name",
        "model_class_name",
        "model_from_pretrained_kwargs",
        "hook_layer",
        "hook_point_layer",
        "hook_name_out",
        "hook_head_index_out",
        "hf_hook_name",
        "hf_hook_name_out",
        "prepend_bos",
        "exclude_special_tokens",
        "neuronpedia_id",
        "context_size",
        "seqpos_slice",
        "dataset_path",
        "dataset_trust_remote_code",
        "sae_lens_training_version",
        # decode only: SAELens 5 scales the latents before W_dec, never in encode()
        "finetuning_scaling_factor",
        # training hyper-parameters that SAELens 6 checkpoints write (TrainingSAEConfig fields)
        "decoder_init_norm",
        "l1_coefficient",
        "l1_warm_up_steps",
        "lp_norm",
        "use_sparse_activations",
        "aux_loss_coefficient",
        "topk_threshold_lr",
        "jumprelu_init_threshold",
        "jumprelu_bandwidth",
        "jumprelu_sparsity_loss_mode",
        "jumprelu_tanh_scale",
        "jumprelu_ste_to_input",
        "l0_coefficient",
        "l0_warm_up_steps",
        "pre_act_loss_coefficient",
        "target_l0",
        "matryoshka_widths",
        "use_matryoshka_aux_loss",
    }
)
"""``cfg.json`` fields that do not change SAELens's ``encode()``; any other field LINE does not
read is refused by name (it might change encode)."""
SAE_CONFIG_FILE = "cfg.json"
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
SPACE_SEPARATOR = "@"
BASIS_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
LAYER_NORM_EPS = 1e-5
BASIS_SPEC_HELP = (
    "sae:PATH (a SAELens folder with cfg.json and sae_weights.safetensors, or a .safetensors file "
    "with W_enc, b_enc, b_dec and, for JumpReLU, threshold) or directions:PATH (a K x d_in matrix "
    "in a .npy file, or a .safetensors file with 'directions' and an optional 'mean')"
)
NPY_MAGIC = b"\x93NUMPY"


class BasisError(ValueError):
    """A basis that cannot be read or used; the message says what would work."""


@dataclass(frozen=True)
class UnitBasis:
    """A loaded basis: ``units = act((normalise(x) - offset) @ encoder + bias) [* scale])``.

    ``encoder`` is ``[d_in, K]`` (SAELens's ``W_enc``, or the directions transposed),
    ``offset`` is ``b_dec`` (when applied to the input) or the directions' mean, ``scale`` the
    norms of ``W_dec``'s rows for a top-k SAE that rescales by them (else ``None``).
    """

    kind: str
    architecture: str  # standard, jumprelu, topk; "linear" for directions
    source: str
    encoder: np.ndarray
    bias: np.ndarray
    offset: np.ndarray
    threshold: np.ndarray | None = None
    k: int | None = None
    normalisation: str = "none"
    scale: np.ndarray | None = None
    hash: str = field(init=False)
    _on_device: dict[str, dict[str, torch.Tensor]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        header = [self.kind, self.architecture, self.k, self.normalisation]
        digest.update(json.dumps(header).encode())
        for name, tensor in self._tensors().items():
            digest.update(f"|{name}:{list(tensor.shape)}|".encode())
            digest.update(np.ascontiguousarray(tensor, dtype="<f4").tobytes())
        object.__setattr__(self, "hash", digest.hexdigest())

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a Ray replica) without the copies of its tensors on devices."""
        return {**self.__dict__, "_on_device": {}}

    def _tensors(self) -> dict[str, np.ndarray]:
        tensors = {"encoder": self.encoder, "bias": self.bias, "offset": self.offset}
        if self.threshold is not None:
            tensors["threshold"] = self.threshold
        if self.scale is not None:
            tensors["scale"] = self.scale
        return tensors

    @property
    def key(self) -> str:
        """The basis's name on the wire: ``<kind>-<first 12 hex digits of its hash>``."""
        return f"{self.kind}-{self.hash[:12]}"

    @property
    def d_in(self) -> int:
        """The width of the layer vectors it reads."""
        return int(self.encoder.shape[0])

    @property
    def size(self) -> int:
        """How many units (latents or directions) it has."""
        return int(self.encoder.shape[1])

    def describe(self) -> str:
        """E.g. ``sae (topk, k=32): 16384 latents over 768-wide vectors``."""
        detail = self.architecture + (f", k={self.k}" if self.k is not None else "")
        if self.scale is not None:
            detail += ", rescaled by decoder norms"
        if self.normalisation != "none":
            detail += f", {self.normalisation}"
        what = "latents" if self.kind == "sae" else "directions"
        return f"{self.kind} ({detail}): {self.size} {what} over {self.d_in}-wide vectors"

    def _weights(self, device: str) -> dict[str, torch.Tensor]:
        """Its tensors on ``device`` as float32; a top-k SAE's decoder norms folded into the
        encoder and its bias (``(x @ W + b) * s == x @ (W * s) + b * s``), once."""
        import torch

        if device not in self._on_device:
            tensors = dict(self._tensors())
            scale = tensors.pop("scale", None)
            if scale is not None:
                tensors["encoder"] = tensors["encoder"] * scale
                tensors["bias"] = tensors["bias"] * scale
            self._on_device[device] = {
                name: torch.as_tensor(tensor, dtype=torch.float32).to(device)
                for name, tensor in tensors.items()
            }
        return self._on_device[device]

    def encode(
        self, vectors: np.ndarray, units: Sequence[int] | None = None, device: str = "cpu"
    ) -> np.ndarray:
        """The units (all, or the listed ones) of ``[images, d_in]`` layer vectors, as one
        batched matrix product on ``device`` (the CPU when that device is not usable here)."""
        import torch

        if vectors.ndim != 2 or vectors.shape[1] != self.d_in:
            raise BasisError(
                f"basis {self.source} reads {self.d_in}-wide vectors, got an array of shape "
                f"{vectors.shape}"
            )
        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32)).to(usable_device(device))
        out = self.encode_tensor(x, units)
        return out.cpu().numpy().astype(np.float32, copy=False)

    def _pre(
        self, x: torch.Tensor, units: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pre-activations ``[..., K]`` (a top-k SAE's already scaled by its decoder norms)
        and the JumpReLU thresholds, of the listed columns only when ``units`` is given."""
        import torch

        weights = self._weights(str(x.device))
        x = self._normalise(x.float()) - weights["offset"]
        encoder, bias, threshold = weights["encoder"], weights["bias"], weights.get("threshold")
        if units is not None:
            columns = torch.as_tensor(list(units), dtype=torch.long, device=x.device)
            encoder, bias = encoder.index_select(1, columns), bias.index_select(0, columns)
            if threshold is not None:
                threshold = threshold.index_select(0, columns)
        pre = torch.addmm(bias, x.reshape(-1, x.shape[-1]), encoder)  # one fused product
        return pre.reshape(*x.shape[:-1], encoder.shape[1]), threshold

    def encode_tensor(self, x: torch.Tensor, units: Sequence[int] | None = None) -> torch.Tensor:
        """The units of a float ``[..., d_in]`` tensor (one vector per position, say) as a
        float32 ``[..., K]`` tensor on its device (``[..., len(units)]`` with ``units``)."""
        import torch

        with torch.inference_mode():
            if self.architecture == "topk":  # every column, to rank them
                assert self.k is not None  # loading requires it
                pre, _ = self._pre(x)
                top = torch.topk(pre, k=self.k, dim=-1, sorted=False)
                out = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
                return out if units is None else out[..., list(units)]
            pre, threshold = self._pre(x, units)  # only the columns asked for
            if self.architecture == "standard":
                return torch.relu(pre)
            if self.architecture == "jumprelu":
                assert threshold is not None  # loading requires it
                return torch.relu(pre) * (pre > threshold)
            return pre

    def encode_aggregate(self, x: torch.Tensor, reduce: str) -> torch.Tensor:
        """The units of ``[images, positions, d_in]`` aggregated over the positions by
        ``reduce`` (``max`` or ``mean``): float32 ``[images, K]``. A top-k SAE's latents are
        aggregated from the k kept per position, never as a dense ``[images, positions, K]``."""
        import torch

        with torch.inference_mode():
            if self.architecture != "topk":  # in place on the fresh pre-activations
                pre, threshold = self._pre(x)
                if threshold is not None:  # JumpReLU: 0 unless above the threshold
                    pre.masked_fill_(pre <= threshold, 0.0)
                if self.architecture == "linear":  # directions
                    return pre.amax(dim=1) if reduce == "max" else pre.mean(dim=1)
                if reduce == "max":  # the maximum of a ReLU is the ReLU of the maximum
                    return pre.amax(dim=1).clamp_min_(0.0)
                return pre.clamp_min_(0.0).mean(dim=1)
            assert self.k is not None  # loading requires it
            pre, _ = self._pre(x)
            top = torch.topk(pre, k=self.k, dim=-1, sorted=False)
            values, indices = torch.relu(top.values).flatten(1), top.indices.flatten(1)
            out = torch.zeros(pre.shape[0], pre.shape[-1], dtype=pre.dtype, device=pre.device)
            if reduce == "max":  # the zeros take part: a latent kept nowhere, or < 0, is 0
                return out.scatter_reduce_(1, indices, values, reduce="amax")
            return out.scatter_add_(1, indices, values) / pre.shape[1]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalisation == "constant_norm_rescale":
            return x * (self.d_in**0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.normalisation == "layer_norm":
            centred = x - x.mean(dim=-1, keepdim=True)
            return centred / (centred.std(dim=-1, keepdim=True) + LAYER_NORM_EPS)
        return x


def usable_device(device: str) -> str:
    """``device`` when this process can use it, else ``cpu`` (a Ray ingress without the GPU
    its replicas hold, say)."""
    import torch

    if device.startswith("cuda"):
        return device if torch.cuda.is_available() else "cpu"
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        return device if mps is not None and mps.is_available() else "cpu"
    return "cpu" if device == "auto" else device


# ----- names ---------------------------------------------------------------------------------
def unit_space(layer: str, basis: str) -> str:
    """The name of ``layer`` read in ``basis`` (a key or a declared name): ``layer@basis``, and
    ``layer@basis#RULE`` when ``layer`` names a positions rule (``layer#RULE``)."""
    rest, separator, rule = layer.rpartition(POSITIONS_SEPARATOR)
    if not separator or not rest:
        return f"{layer}{SPACE_SEPARATOR}{basis}"
    return f"{rest}{SPACE_SEPARATOR}{basis}{POSITIONS_SEPARATOR}{rule}"


def split_unit_space(name: str) -> tuple[str, str | None]:
    """``(layer, basis)`` of a unit space's name (its positions rule left out); ``(name, None)``
    for a plain layer."""
    try:
        name, _rule = split_positions(name)
    except PositionsError as error:
        raise BasisError(str(error)) from error
    layer, separator, basis = name.rpartition(SPACE_SEPARATOR)
    return (layer, basis) if separator and layer else (name, None)


def width_mismatch(basis: UnitBasis, target: str, layer: str, width: int) -> str:
    """Why ``basis`` cannot read ``layer``: both widths, and what to do."""
    return (
        f"basis {basis.source} reads {basis.d_in}-wide vectors (d_in {basis.d_in}), but layer "
        f"{layer!r} of {target!r} has {width} units; use the basis with the layer it was made "
        f"for (`line layers {target}` lists the widths)"
    )


def out_of_range(basis: UnitBasis, unit: int) -> str:
    """Why ``unit`` is not a unit of ``basis``: its range."""
    what = "latents" if basis.kind == "sae" else "directions"
    return (
        f"unit {unit} is out of range: basis {basis.source} has {basis.size} {what}, indices 0 "
        f"to {basis.size - 1}"
    )


# ----- reading files -------------------------------------------------------------------------
def parse_basis_spec(spec: str) -> tuple[str, Path]:
    """``(kind, path)`` of ``sae:PATH`` or ``directions:PATH``; the path must exist."""
    kind, separator, rest = spec.partition(":")
    if not separator or kind not in BASIS_KINDS or not rest:
        raise BasisError(f"cannot read basis {spec!r}; use {BASIS_SPEC_HELP}")
    path = Path(rest).expanduser()
    if not path.exists():
        raise BasisError(f"basis {spec!r}: {path} does not exist")
    if not (path.is_file() or path.is_dir()):
        raise BasisError(f"basis {spec!r}: {path} is not a regular file or a folder")
    return kind, path


def load_basis(spec: str) -> UnitBasis:
    """Read the basis a spec names (module docstring); ``BasisError`` says what is wrong."""
    kind, path = parse_basis_spec(spec)
    source = f"{kind}:{path.resolve()}"
    if kind == "sae":
        return _load_sae(path, source)
    return _load_directions(path, source)


def _file_format(path: Path) -> str:
    """``npy`` or ``safetensors`` from a file's first bytes, else a ``BasisError``."""
    with path.open("rb") as stream:
        start = stream.read(9)
    if start.startswith(NPY_MAGIC):
        return "npy"
    if len(start) == 9 and start[8:9] == b"{":  # an 8-byte header length, then JSON
        return "safetensors"
    raise BasisError(
        f"{path} is neither a safetensors nor a .npy file (it starts with {start[:8]!r}); "
        f"a basis is {BASIS_SPEC_HELP}"
    )


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BasisError(f"{path} is not a readable safetensors file ({error})") from error
    return {name: tensor.to(torch.float32).numpy() for name, tensor in tensors.items()}


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BasisError(f"{path} is not a readable JSON file ({error})") from error
    if not isinstance(config, dict):
        raise BasisError(f"{path} must hold a JSON object (SAELens's cfg.json)")
    return config


def _load_sae(path: Path, source: str) -> UnitBasis:
    if path.is_dir():
        missing = [
            name for name in (SAE_CONFIG_FILE, SAE_WEIGHTS_FILE) if not (path / name).is_file()
        ]
        if missing:
            raise BasisError(
                f"{path} is not a SAELens folder: it lacks {' and '.join(missing)}; pass a folder "
                f"with {SAE_CONFIG_FILE} and {SAE_WEIGHTS_FILE}, or a .safetensors file"
            )
        config = _read_config(path / SAE_CONFIG_FILE)
        weights = path / SAE_WEIGHTS_FILE
    else:
        config, weights = {}, path
    if _file_format(weights) != "safetensors":
        raise BasisError(
            f"{weights} is a .npy file; an SAE is a SAELens folder or a .safetensors file "
            "(a .npy matrix is read as directions:PATH)"
        )
    tensors = _read_safetensors(weights)
    if not config:  # a plain file: the architecture its tensors imply
        config = {"architecture": "jumprelu" if "threshold" in tensors else "standard"}
    return sae_basis(tensors, config, source)


def _sae_lens_major(config: Mapping[str, Any]) -> int | None:
    """The major SAELens version that wrote ``config`` (``None`` when it does not say)."""
    metadata = config.get("metadata")
    version = config.get("sae_lens_version") or (
        metadata.get("sae_lens_version") if isinstance(metadata, Mapping) else None
    )
    head = str(version or "").split(".")[0]
    return int(head) if head.isdigit() else None


def _check_fields(config: Mapping[str, Any], source: str, before_6: bool) -> None:
    """Refuse fields LINE does not know, and the known ones that change what encode() reads."""
    unknown = sorted(set(config) - SAE_ENCODE_FIELDS - SAE_INERT_FIELDS)
    if unknown:
        raise BasisError(
            f"{source}: {SAE_CONFIG_FILE} has field(s) {', '.join(unknown)} that LINE does not "
            "know; a field it does not know might change how SAELens encodes, so the SAE is "
            f"refused (if SAELens's encode() ignores them, delete them from {SAE_CONFIG_FILE})"
        )
    metadata = config.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise BasisError(f"{source}: {SAE_CONFIG_FILE}'s metadata must be a JSON object")
    for where, fields in ((config, ("hook_head_index", "hook_point_head_index")),
                          (metadata, ("hook_head_index",))):  # fmt: skip
        for name in fields:
            if where.get(name) is not None:
                raise BasisError(
                    f"{source}: {name} is {where[name]!r}: the SAE reads one attention head's "
                    "slice of its layer, which no layer LINE reads gives; LINE reads SAEs of "
                    "whole layer vectors"
                )
    reshape = config.get("reshape_activations")
    if reshape is None and before_6:  # SAELens 5: a hook_z hook name means the reshape
        hook = str(config.get("hook_name") or config.get("hook_point") or "")
        reshape = "hook_z" if "hook_z" in hook else "none"
    if reshape == "hook_z":
        raise BasisError(
            f"{source}: reshape_activations is 'hook_z': SAELens flattens attention heads' "
            "outputs [..., n_heads, d_head] before encoding, and no layer LINE reads gives "
            "them (its layers are module outputs: CNN maps, ViT tokens, vectors)"
        )
    if reshape not in (None, "none"):
        raise BasisError(
            f"{source}: unknown reshape_activations {reshape!r}; LINE reads 'none' (and refuses "
            "'hook_z')"
        )


def _architecture(config: Mapping[str, Any], source: str, before_6: bool) -> tuple[str, int | None]:
    """The architecture (and ``k`` for top-k) a ``cfg.json`` names, SAELens 5 spellings too."""
    named = config.get("architecture", "standard")
    architecture = str(named).lower()
    if architecture == "relu":
        architecture = "standard"
    if architecture in REFUSED_ARCHITECTURES:
        raise BasisError(
            f"{source}: SAELens architecture {architecture!r} is not supported: "
            f"{REFUSED_ARCHITECTURES[architecture]}. LINE reads {', '.join(SAE_ARCHITECTURES)}"
        )
    if architecture not in SAE_ARCHITECTURES:
        raise BasisError(
            f"{source}: unknown SAE architecture {named!r} in {SAE_CONFIG_FILE}; supported: "
            f"{', '.join(SAE_ARCHITECTURES)} (relu reads as standard)"
        )
    activation = config.get("activation_fn_str") or config.get("activation_fn")
    k: Any = config.get("k")
    if activation is not None and str(activation).lower() != "relu":
        if before_6 and architecture == "standard" and str(activation).lower() == "topk":
            architecture, k = "topk", (config.get("activation_fn_kwargs") or {}).get("k", k)
        else:
            raise BasisError(
                f"{source}: activation_fn {activation!r} is not supported: LINE reads relu and "
                "SAELens 5's topk (with activation_fn_kwargs k) on a standard SAE"
            )
    if architecture != "topk":
        return architecture, None
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise BasisError(
            f"{source}: a topk SAE needs a positive integer 'k' in its config, got {k!r}"
        )
    return architecture, k


def _normalisation(config: Mapping[str, Any], source: str) -> str:
    """``normalize_activations`` as SAELens 6 reads it (SAELens 5's booleans too)."""
    value = config.get("normalize_activations")
    if isinstance(value, bool):  # SAELens 5: true is the April-update scaling, folded on save
        value = "expected_average_only_in" if value else "none"
    value = value or "none"
    if value == "covariance_whitening":
        raise BasisError(
            f"{source}: normalize_activations is 'covariance_whitening': the SAE expects "
            "whitened inputs, and its weights do not hold the whitening. SAELens folds it into "
            "the weights when it saves an inference model (save_inference_model); load that"
        )
    if value not in NORMALISATIONS:
        raise BasisError(
            f"{source}: unknown normalize_activations {value!r}; supported: "
            + ", ".join(NORMALISATIONS)
        )
    return str(value)


def _flag(config: Mapping[str, Any], name: str, default: bool, source: str) -> bool:
    value = config.get(name, default)
    if not isinstance(value, bool):
        raise BasisError(f"{source}: {name} must be true or false, got {value!r}")
    return value


def sae_basis(
    tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], source: str
) -> UnitBasis:
    """An SAE basis from SAELens tensors and config (what :func:`load_basis` reads from disk)."""
    major = _sae_lens_major(config)
    before_6 = major is None or major < 6  # as SAELens's own handle_config_defaulting decides
    architecture, k = _architecture(config, source, before_6)  # a refused one, by its name
    _check_fields(config, source, before_6)
    normalisation = _normalisation(config, source)
    if "W_enc" not in tensors:
        raise BasisError(
            f"{source} has no W_enc tensor (it has: {', '.join(sorted(tensors)) or 'none'}); an "
            "SAE needs W_enc [d_in, d_sae], b_enc [d_sae] and b_dec [d_in]"
        )
    encoder = _finite(tensors["W_enc"], "W_enc", source)
    if encoder.ndim != 2:
        raise BasisError(f"{source}: W_enc must be [d_in, d_sae], got shape {list(encoder.shape)}")
    d_in, d_sae = encoder.shape
    for name, size in (("d_in", d_in), ("d_sae", d_sae)):
        if name in config and config[name] != size:
            raise BasisError(
                f"{source}: {SAE_CONFIG_FILE} says {name} {config[name]}, but W_enc is "
                f"{list(encoder.shape)} ({name} {size})"
            )
    bias = _vector(tensors, "b_enc", d_sae, source)
    b_dec = _vector(tensors, "b_dec", d_in, source)
    applied = _flag(config, "apply_b_dec_to_input", True, source)
    offset = b_dec if applied else np.zeros(d_in, np.float32)
    threshold = None
    if architecture == "jumprelu":
        if "threshold" in tensors:
            threshold = _vector(tensors, "threshold", d_sae, source)
        elif "log_threshold" in tensors:  # older SAELens training checkpoints, as SAELens reads
            threshold = np.exp(_vector(tensors, "log_threshold", d_sae, source))
        else:
            raise BasisError(f"{source}: a jumprelu SAE needs a 'threshold' tensor [d_sae]")
    if k is not None and k > d_sae:
        raise BasisError(f"{source}: k is {k}, but the SAE has only {d_sae} latents")
    scale = None
    # only SAELens's top-k config has the flag; it drops it from every other architecture
    if architecture == "topk" and _flag(config, "rescale_acts_by_decoder_norm", False, source):
        scale = _decoder_norms(tensors, d_in, d_sae, source)
    return UnitBasis(
        "sae", architecture, source, encoder, bias, offset, threshold, k, normalisation, scale
    )


def _decoder_norms(
    tensors: Mapping[str, np.ndarray], d_in: int, d_sae: int, source: str
) -> np.ndarray:
    """The norms of ``W_dec``'s rows, which a top-k SAE with ``rescale_acts_by_decoder_norm``
    multiplies its pre-activations by before choosing the top k."""
    import torch

    if "W_dec" not in tensors:
        raise BasisError(
            f"{source}: rescale_acts_by_decoder_norm is true, so encoding needs W_dec "
            f"[{d_sae}, {d_in}] (its row norms scale the pre-activations), but the file has none"
        )
    decoder = _finite(tensors["W_dec"], "W_dec", source)
    if decoder.shape != (d_sae, d_in):
        raise BasisError(
            f"{source}: W_dec must be [d_sae, d_in] = [{d_sae}, {d_in}], got {list(decoder.shape)}"
        )
    return torch.as_tensor(decoder).norm(dim=-1).numpy().astype(np.float32)


def _finite(tensor: np.ndarray, name: str, source: str) -> np.ndarray:
    """The tensor as float32, refused when any value is NaN or infinite."""
    array = np.asarray(tensor, dtype=np.float32)
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise BasisError(
            f"{source}: tensor {name} has {bad} NaN or infinite value(s) of {array.size}; the "
            "basis cannot be used (re-export it from a checkpoint without them)"
        )
    return array


def _vector(tensors: Mapping[str, np.ndarray], name: str, size: int, source: str) -> np.ndarray:
    """A bias-like tensor of ``size`` (zeros when absent)."""
    if name not in tensors:
        return np.zeros(size, np.float32)
    vector = _finite(tensors[name], name, source)
    if vector.shape != (size,):
        raise BasisError(f"{source}: {name} must have shape [{size}], got {list(vector.shape)}")
    return vector


def _load_directions(path: Path, source: str) -> UnitBasis:
    if path.is_dir():
        raise BasisError(f"{source}: directions are one .npy or .safetensors file, not a folder")
    mean = None
    if _file_format(path) == "npy":
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise BasisError(f"{path} is not a readable numeric .npy file ({error})") from error
    else:
        tensors = _read_safetensors(path)
        if "directions" in tensors:
            rows = tensors["directions"]
        elif len([t for t in tensors.values() if t.ndim == 2]) == 1:
            rows = next(t for t in tensors.values() if t.ndim == 2)
        else:
            raise BasisError(
                f"{source} has no 'directions' tensor (it has: {', '.join(sorted(tensors))}); "
                "save the K x d_in matrix as 'directions' (and the optional mean as 'mean')"
            )
        mean = tensors.get("mean")
    if rows.dtype.kind not in "fiu":
        raise BasisError(f"{source}: the directions must be numbers, got dtype {rows.dtype}")
    return directions_basis(rows, mean, source)


def directions_basis(rows: np.ndarray, mean: np.ndarray | None, source: str) -> UnitBasis:
    """A directions basis: unit ``k`` is ``(x - mean) . rows[k]``."""
    matrix = _finite(rows, "directions", source)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise BasisError(
            f"{source}: directions must be a K x d_in matrix, got shape {list(matrix.shape)}"
        )
    d_in = matrix.shape[1]
    offset = np.zeros(d_in, np.float32)
    if mean is not None:
        offset = _finite(mean, "mean", source)
        if offset.shape != (d_in,):
            raise BasisError(
                f"{source}: the mean must have shape [{d_in}] like the directions' rows, got "
                f"{list(offset.shape)}"
            )
    bias = np.zeros(matrix.shape[0], np.float32)
    return UnitBasis("directions", "linear", source, np.ascontiguousarray(matrix.T), bias, offset)


# ----- writing files -------------------------------------------------------------------------
def write_sae(
    folder: str | Path,
    tensors: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
) -> Path:
    """Write an SAE in SAELens's folder format (``cfg.json`` + ``sae_weights.safetensors``)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = tensors["W_enc"]
    full_config = {"d_in": int(encoder.shape[0]), "d_sae": int(encoder.shape[1]),
                   "dtype": "float32", "device": "cpu", **config}  # fmt: skip
    (folder / SAE_CONFIG_FILE).write_text(json.dumps(full_config, indent=2) + "\n")
    save_file(
        {name: torch.as_tensor(np.ascontiguousarray(t, np.float32)) for name, t in tensors.items()},
        str(folder / SAE_WEIGHTS_FILE),
    )
    return folder


def write_directions(path: str | Path, rows: np.ndarray, mean: np.ndarray | None = None) -> Path:
    """Write directions as ``.npy`` (rows only) or ``.safetensors`` (``directions``, ``mean``)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        if mean is not None:
            raise BasisError("a .npy file holds the directions only; write a mean to .safetensors")
        np.save(path, np.asarray(rows, np.float32))
        return path
    tensors = {"directions": torch.as_tensor(np.ascontiguousarray(rows, np.float32))}
    if mean is not None:
        tensors["mean"] = torch.as_tensor(np.ascontiguousarray(mean, np.float32))
    save_file(tensors, str(path))
    return path


# ----- a server's bases ----------------------------------------------------------------------
@dataclass
class BasisRegistry:
    """The bases a server applies, by key, and the names they were declared under
    (``line serve --basis NAME=SPEC``). ``allow_paths``: requests may load bases by path
    (servers on loopback only: the path is on the client's machine too)."""

    allow_paths: bool = False
    bases: dict[str, UnitBasis] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def declared(cls, declarations: Iterable[str], allow_paths: bool = False) -> BasisRegistry:
        """A registry of ``NAME=SPEC`` declarations, each basis loaded now."""
        registry = cls(allow_paths=allow_paths)
        for declaration in declarations:
            name, separator, spec = declaration.partition("=")
            if not separator or not BASIS_NAME_PATTERN.match(name):
                raise BasisError(
                    f"cannot read basis declaration {declaration!r}; write NAME=SPEC with a NAME "
                    f"of letters, digits, '_', '.', '-' (e.g. l4-sae=sae:/data/sae) and SPEC "
                    f"{BASIS_SPEC_HELP}"
                )
            if name in registry.names:
                raise BasisError(f"basis name {name!r} is declared twice; give each its own")
            registry.add(load_basis(spec), name)
        return registry

    def add(self, basis: UnitBasis, name: str | None = None) -> str:
        """Hold ``basis`` (under ``name`` too); its key. The same tensors twice are held once."""
        self.bases.setdefault(basis.key, basis)
        if name is not None:
            self.names[name] = basis.key
        return basis.key

    def get(self, name: str) -> UnitBasis:
        """A basis by key or declared name."""
        key = self.names.get(name, name)
        if key not in self.bases:
            known = [*self.names, *self.bases]
            raise BasisError(
                f"this server has no basis {name!r}; it has: "
                + (", ".join(known) or "none (declare one with line serve --basis NAME=SPEC)")
            )
        return self.bases[key]

    def split(self, layer: str) -> tuple[str, UnitBasis | None]:
        """``(layer vector's layer, basis)`` of a layer name or unit space."""
        base, name = split_unit_space(layer)
        return (base, None) if name is None else (base, self.get(name))

    def unit_spaces(self, layers: Mapping[str, int]) -> list[dict[str, Any]]:
        """Every (layer, basis) whose widths fit, as ``/v1/models`` layer entries."""
        return [
            {"name": unit_space(layer, key), "units": basis.size, "basis": key, "layer": layer}
            for layer, width in layers.items()
            for key, basis in self.bases.items()
            if basis.d_in == width
        ]

    def describe(self) -> list[dict[str, Any]]:
        """Every basis with its names, kind, sizes and hash (for ``/v1/models``)."""
        return [
            {
                "key": key,
                "names": [name for name, named in self.names.items() if named == key],
                "kind": basis.kind,
                "architecture": basis.architecture,
                "d_in": basis.d_in,
                "units": basis.size,
                "hash": basis.hash,
                "source": basis.source,
            }
            for key, basis in self.bases.items()
        ]


def check_fits(registry: BasisRegistry, layers: Mapping[str, Mapping[str, int]]) -> None:
    """Every basis fits some layer of ``layers`` (target -> layer -> width)."""
    for key, basis in registry.bases.items():
        if not any(
            basis.d_in == width for by_layer in layers.values() for width in by_layer.values()
        ):
            widths = "; ".join(
                f"{target}: " + ", ".join(f"{layer} {width}" for layer, width in by_layer.items())
                for target, by_layer in layers.items()
            )
            raise BasisError(
                f"basis {key} ({basis.source}) reads {basis.d_in}-wide vectors, but no layer of "
                f"the served targets has {basis.d_in} units ({widths or 'no targets'})"
            )
