"""Turning world samples into model inputs the way the processor does: image markers widened, BOS, labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from aim_icl.world.corpora import PretrainSample
from aim_icl.world.recipe import IMAGE_TOKENS
from aim_icl.world.vocab import IMAGE


def encode_samples(processor, samples: Sequence[PretrainSample]) -> dict[str, torch.Tensor]:
    """A right-padded training batch: `text` then `target` + EOS, with labels on the target alone."""
    tok = processor.tokenizer
    rows, labels = [], []
    for sample in samples:
        prompt = tok(sample.text.replace(IMAGE, IMAGE * IMAGE_TOKENS))["input_ids"]
        target = tok(sample.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(len(r) for r in rows)
    batch = {
        "input_ids": torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }
    images = [s.scene.render() for s in samples if s.scene is not None]
    if images:
        batch["pixel_values"] = pixel_values(processor, images)
    return batch


def pixel_values(processor, images) -> torch.Tensor:  # (n, 3, 32, 32)
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]
