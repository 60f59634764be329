"""Pooled image embeddings from each family's own vision tower: one row per image, whatever the batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aim_icl import AIMError
from aim_icl.core.vision import image_embeddings
from aim_icl.testing.tiny import tiny_image

# different sizes: tiling processors give these images different crop counts
IMAGES = [tiny_image(0), tiny_image(1, (64, 40)), tiny_image(2, (20, 30)), tiny_image(0)]


def test_one_row_per_image_independent_of_the_batch(aim):
    model, processor = aim.model, aim.encoder.processor
    batched = image_embeddings(model, processor, IMAGES, batch_size=4)
    alone = image_embeddings(model, processor, IMAGES, batch_size=1)
    assert batched.shape == (4, aim.backbone.embed_size) and batched.dtype == torch.float32
    assert torch.isfinite(batched).all()
    scale = alone.abs().max()
    assert (batched - alone).abs().max() <= 1e-5 * scale
    assert (batched[0] - batched[3]).abs().max() <= 1e-5 * scale  # the same image twice: the same row
    distinct = torch.cdist(batched[:3], batched[:3]) + torch.eye(3)
    assert distinct.min() > 1e-6  # different images: different rows


def test_the_embedding_is_the_mean_of_the_image_features(llava):
    """The embedding is the vision tower's own output (projected image tokens), pooled: no second model."""
    processor = llava.encoder.processor
    pixels = processor.image_processor(images=[tiny_image(5)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = llava.model.get_image_features(pixel_values=pixels).pooler_output[0]  # (tokens, embed)
    embedding = image_embeddings(llava.model, processor, [tiny_image(5)])[0]
    assert torch.allclose(embedding, features.mean(0), atol=1e-6)


def test_paths_and_pil_images_give_the_same_embedding(llava, tmp_path):
    tiny_image(3).save(tmp_path / "a.png")
    from_path, from_pil = image_embeddings(
        llava.model, llava.encoder.processor, [tmp_path / "a.png", tiny_image(3)]
    )
    assert torch.equal(from_path, from_pil)


def test_a_model_without_a_vision_tower_is_refused(llava):
    with pytest.raises(AIMError, match="get_image_features"):
        image_embeddings(nn.Linear(2, 2), llava.encoder.processor, [tiny_image(0)])
