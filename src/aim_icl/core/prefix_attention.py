"""Attention over a cached prefix without an explicit mask: the prefix and the new positions apart, merged exactly.

With a KV-cache offset, transformers builds an explicit (L, P + L) boolean mask for SDPA (the new block aligned
to the END of the keys), and PyTorch's CPU kernel is 2-3x slower with a mask than with `is_causal`. When that
mask would say "every cached key, then causal over the new block", attention splits into two maskless calls:
the new queries over the P cached keys (no mask at all) and over the new keys (`is_causal`, aligned). Each
returns its softmax normaliser (log-sum-exp); the exact softmax over all keys weights the two outputs by them:
  out = s * out_prefix + (1 - s) * out_new,  s = sigmoid(lse_prefix - lse_new).

Two registered functions do it. The mask function (`prefix_mask`) gives transformers' own sdpa mask, except None
in exactly that case on the CPU: a plain causal mask, no padding, no sliding window, the new block after every
cached key; so no L x (P + L) mask is built. The attention function (`prefix_split_attention`) reads None with
more keys than queries as that case and splits; anything else (a materialised mask: padding, sliding windows,
bidirectional image blocks; decoding one token; a GPU; a dtype the CPU kernel lacks) goes to the stock `sdpa`.

`split_prefix_attention(model)` switches a model's language model to these functions for a block of code and
back; only a language model that uses `sdpa` is switched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

NAME = "aim_prefix_split"
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_EXTRAS = ("dropout", "softcap", "position_bias", "output_attentions", "sinks")  # the split path has none


@contextmanager
def split_prefix_attention(model: nn.Module) -> Iterator[bool]:
    """Run the language model of `model` with the split attention inside the block; yields whether it switched."""
    config = model.config.get_text_config()
    before = config._attn_implementation
    if before != "sdpa":  # eager, flash, flex: their own kernels and masks, left alone
        yield False
        return
    _register()
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = before


def prefix_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset=0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs,
):
    """transformers' sdpa mask, or None where it would be "every cached key, then causal" (see the module doc)."""
    from transformers.masking_utils import causal_mask_function, prepare_padding_mask, sdpa_mask

    mask_function = mask_function or causal_mask_function
    if 1 < q_length < kv_length:
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        if (
            torch.device(kwargs.get("device", "cpu")).type
            == "cpu"  # elsewhere the stock kernels take the mask
            and mask_function is causal_mask_function
            and local_size is None
            and kv_offset == 0
            and isinstance(q_offset, int)
            and q_offset == kv_length - q_length
            and (padding is None or bool(padding[:, :kv_length].all()))
        ):
            return None
        allow_is_causal_skip = False  # sdpa_mask's own None would mean another alignment here: materialise
    return sdpa_mask(
        batch_size,
        q_length,
        kv_length,
        q_offset,
        kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        local_size=local_size,
        allow_is_causal_skip=allow_is_causal_skip,
        **kwargs,
    )


def prefix_split_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """An `AttentionInterface` function: the split path for `prefix_mask`'s None, else transformers' sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length, total = query.shape[2], key.shape[2]
    if attention_mask is None and 1 < length < total and getattr(module, "is_causal", True):
        if _splittable(query, key, value, kwargs):
            return split_attention(query, key, value, total - length, kwargs.get("scaling")), None
        attention_mask = lower_right_mask(length, total, query.device)  # what None stands for, made explicit
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def split_attention(query, key, value, prefix: int, scale: float | None = None) -> torch.Tensor:
    """Attention of the L new queries over P = `prefix` cached keys plus L new keys (causal), (B, L, H, D).

    query (B, H, L, D); key, value (B, H_kv, P + L, D): grouped key/value heads are repeated to H.
    """
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    old, old_lse = flash(query, key[:, :, :prefix], value[:, :, :prefix], 0.0, False, scale=scale)
    new, new_lse = flash(query, key[:, :, prefix:], value[:, :, prefix:], 0.0, True, scale=scale)
    share = torch.sigmoid(old_lse - new_lse).unsqueeze(-1)  # (B, H, L, 1): the prefix's share of the softmax
    out = new.float() + (old.float() - new.float()) * share
    return out.to(query.dtype).transpose(1, 2).contiguous()


def lower_right_mask(length: int, total: int, device=None) -> torch.Tensor:
    """(L, T) boolean mask: query i sees keys 0 .. T - L + i (every cached key, the new ones causally)."""
    return torch.ones(length, total, dtype=torch.bool, device=device).tril(total - length)


def _splittable(query, key, value, kwargs: dict) -> bool:
    """Whether the CPU flash kernel (which returns the log-sum-exp) can take this call as it is."""
    return (
        query.device.type == "cpu"
        and query.dtype in _CPU_DTYPES
        and key.shape[-1] == value.shape[-1]
        and not any(kwargs.get(k) for k in _EXTRAS)
    )


def _register() -> None:
    """Register both functions under `NAME` (once; registering adds a name and changes no other)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, prefix_split_attention)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(NAME, prefix_mask)
