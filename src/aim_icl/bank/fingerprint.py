"""Content keys of demonstrations, hashes of weights, and the fingerprint of the backbone a bank belongs to.

Keys and fingerprints are sha256 hashes of canonical JSON. A content key is a function of what the model reads: the
image's pixels after `load_image` (8-bit RGB; so neither the file's path nor its format matters), the text and the
template. Every cache of demo states (bank, training, evaluation) keys demos this way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch

from aim_icl.core.demo import ImageLike, load_image
from aim_icl.core.dtypes import dtype_name

# config entries that say how a model was loaded or run, not what it computes
_VOLATILE_CONFIG = {
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "_commit_hash",
    "architectures",  # set by save_pretrained; the model type already says it
    "use_cache",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
}
# the order in which a mismatch is reported: the most telling difference first
FINGERPRINT_FIELDS = (
    "model_type",
    "name_or_path",
    "config_hash",
    "dtype",
    "layer",
    "template",
    "weights_hash",
)
_SAMPLES_PER_TENSOR = 64


def canonical_hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def image_hash(image: ImageLike | None) -> str | None:
    """sha256 of the 8-bit RGB pixels (and size) that `load_image` gives; None for a text-only demo."""
    if image is None:
        return None
    rgb = load_image(image)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def content_key(image: ImageLike | None, text: str, template: Any) -> str:
    """The key a demo is stored under: sha256 over canonical JSON of its pixels' hash, its text and the template.

    `template` is a `PromptTemplate` (or any JSON-able value standing for how the demo is read).
    """
    if dataclasses.is_dataclass(template):
        template = dataclasses.asdict(template)
    return canonical_hash({"image": image_hash(image), "text": text, "template": template})


def backbone_fingerprint(aim) -> dict[str, Any]:
    """What stored hidden states depend on: model type, name/path, config hash, dtype, template, layer, weights.

    `weights_hash` samples every parameter, so two checkpoints with one config (a fine-tuned copy) differ.
    """
    model = aim.backbone.model
    return {
        "model_type": aim.backbone.signature.model_type,
        "name_or_path": aim.backbone.signature.name_or_path,
        "config_hash": canonical_hash(_strip(model.config.to_dict())),
        "dtype": dtype_name(aim.backbone.dtype),
        "layer": aim.layer,
        "template": dataclasses.asdict(aim.template),
        "weights_hash": weights_hash(model),
    }


def fingerprint_mismatch(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """A human-readable first difference, or None when both describe the same backbone.

    An empty name/path (a model built in memory) matches any name, as for projectors.
    """
    for field in FINGERPRINT_FIELDS:
        a, b = stored.get(field), current.get(field)
        if field == "name_or_path" and (not a or not b):
            continue
        if a != b:
            shown = (a, b) if field != "template" else ("<stored template>", "<this template>")
            return f"{field} {_short(shown[0])} != {_short(shown[1])}"
    return None


@torch.no_grad()
def weights_hash(model: torch.nn.Module, per_tensor: int | None = _SAMPLES_PER_TENSOR) -> str:
    """sha256 of every parameter and buffer: `per_tensor` evenly spaced values of each (cheap whatever the
    model's size: a backbone), or every value (`None`: a projector, where any trained change must show)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.is_meta or tensor.numel() == 0:
            continue
        flat = tensor.detach().reshape(-1)
        count = flat.numel() if per_tensor is None else min(flat.numel(), per_tensor)
        picks = torch.arange(count) * (flat.numel() - 1) // max(count - 1, 1)  # integers: exact at any size
        digest.update(name.encode())
        digest.update(flat[picks.to(flat.device)].double().cpu().numpy().tobytes())
    return digest.hexdigest()


def _strip(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _strip(v) for k, v in config.items() if k not in _VOLATILE_CONFIG}
    if isinstance(config, (list, tuple)):
        return [_strip(v) for v in config]
    return config


def _short(value: Any) -> str:
    text = repr(value)
    return text[:19] + "…'" if isinstance(value, str) and len(text) > 24 else text
