"""Image embeddings from the backbone's own vision tower, for similarity search without a second model.

`model.get_image_features(pixel_values=..., <the image processor's other outputs>)` is the one entry point every
Hugging Face MLLM has; its `pooler_output` holds an image's features in the LM's embedding space (per image, or
per crop for tiling processors). The embedding of an image is the mean of all its feature vectors.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from aim_icl.core.demo import ImageLike, load_image
from aim_icl.errors import AIMError

CROP_COUNT_KEYS = ("num_patches", "num_crops")  # image-processor outputs giving each image's crop count


@torch.no_grad()
def image_embeddings(
    model: nn.Module, processor, images: Sequence[ImageLike], batch_size: int = 8
) -> torch.Tensor:
    """Pooled vision-tower embeddings, (len(images), embed) float32 on the CPU, one row per image.

    Batches whose features cannot be told apart per image are read one image at a time, so a row never depends
    on the other images of its batch.
    """
    if not hasattr(model, "get_image_features"):
        raise AIMError(f"{type(model).__name__} has no get_image_features; it cannot embed images")
    images = [load_image(image) for image in images]
    rows: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pooled = _pooled(model, processor, batch)
        if pooled is None:  # one image alone always splits: all its features are its own
            pooled = [row for image in batch for row in _pooled(model, processor, [image])]
        rows += pooled
    if not rows:
        return torch.empty(0, model.get_input_embeddings().embedding_dim)
    return torch.stack(rows)


def _pooled(model: nn.Module, processor, images: list) -> list[torch.Tensor] | None:
    """Mean feature vector of each image, or None when the features do not split into one group per image."""
    # nested per image: processors that take a flat list as one multi-image sample (Idefics3) then batch them
    outputs = processor.image_processor(images=[[image] for image in images], return_tensors="pt")
    features = _image_features(model, outputs)
    groups = _per_image(features, len(images), _crop_counts(outputs))
    if groups is None:
        return None
    return [g.reshape(-1, g.shape[-1]).float().mean(0).cpu() for g in groups]  # each (embed,)


def _image_features(model: nn.Module, outputs) -> list[torch.Tensor] | torch.Tensor:
    """`get_image_features` on the image processor's outputs that it takes, cast to the model's device/dtype."""
    params = inspect.signature(model.get_image_features).parameters
    device, dtype = _device_dtype(model)
    kwargs = {
        key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
        for key, value in outputs.items()
        if key in params and isinstance(value, torch.Tensor)
    }
    if "pixel_values" not in kwargs:
        raise AIMError("the image processor gave no pixel_values; this model's images cannot be embedded")
    out = model.get_image_features(**kwargs)
    if isinstance(out, (torch.Tensor, list, tuple)):  # older transformers return the features directly
        return out
    pooled = getattr(out, "pooler_output", None)
    return pooled if pooled is not None else out.last_hidden_state


def _per_image(features, n_images: int, crop_counts: list[int] | None) -> list[torch.Tensor] | None:
    """Split features into one group per image: one entry per image, or per crop when crop counts are given."""
    entries = list(features)  # list/tuple items, or rows of a (n, tokens, embed) tensor
    if n_images == 1:
        return [torch.cat([e.reshape(-1, e.shape[-1]) for e in entries])]
    if len(entries) == n_images:
        return entries
    if crop_counts is not None and len(crop_counts) == n_images and sum(crop_counts) == len(entries):
        bounds = torch.tensor([0, *crop_counts]).cumsum(0).tolist()
        return [torch.stack(entries[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return None


def _crop_counts(outputs) -> list[int] | None:
    for key in CROP_COUNT_KEYS:
        value = outputs.get(key)
        if isinstance(value, torch.Tensor):
            return value.flatten().tolist()
    return None


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the vision tower's inputs go: the device and float dtype of the model's first floating parameter."""
    param = next(p for p in model.parameters() if p.is_floating_point())
    return param.device, param.dtype
