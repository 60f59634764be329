"""Attention over a cached prefix without an explicit mask, exact, at the cost of attention with no cache.

With a KV-cache offset, transformers builds an explicit (L, P + L) boolean mask for SDPA (the L new queries aligned
to the END of the P + L keys), and PyTorch's CPU kernel is 2-4x slower with a mask than with `is_causal`. That
mask says "every cached key, then causal over the new block", and two maskless computations give exactly the same:
- padded: put P dummy queries before the new ones and attend causally over all P + L keys (one `is_causal` call;
  row P + i sees keys 0 .. P + i, as query i must), then drop the dummy rows. It spends P^2 / 2 dot products on
  rows nobody reads: the choice while P <= L / 2 (a query image after a few hundred demo tokens).
- split: the new queries over the P cached keys (no mask) and over the L new keys (`is_causal`, aligned); the CPU
  flash kernel returns each part's softmax normaliser (log-sum-exp), and the exact softmax over all keys weights
  the two outputs by them: out = s * out_prefix + (1 - s) * out_new, s = sigmoid(lse_prefix - lse_new). Two
  calls and a merge, no wasted rows: the choice for a short query after a long prefix.
Measured (torch 2.13, one thread, 2,938 new positions after 259 cached, 4 heads of 16): masked 97 ms, split 27 ms,
padded 24 ms, no cache (3,197 positions causal) 24 ms.

Two registered functions do it. The mask function (`prefix_mask`) gives transformers' own sdpa mask, except None
in exactly that case on the CPU: a plain causal mask, no padding, no sliding window, the new block after every
cached key; so no L x (P + L) mask is built. The attention function (`cached_prefix_attention`) reads None with
more keys than queries as that case; anything else (a materialised mask: padding, sliding windows, bidirectional
image blocks; decoding one token; a GPU) goes to the stock `sdpa`.

`use_prefix_attention(model)` switches a model's language model to these functions, once: only a language model
that uses `sdpa` is switched, and only the language model (the vision tower keeps its own attention).
"""

from __future__ import annotations

import torch
from torch import nn

NAME = "aim_cached_prefix"
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# keyword arguments the maskless paths do not implement: a call with any of them set takes the stock path
_EXTRAS = (
    "dropout",
    "softcap",
    "position_bias",
    "output_attentions",
    "sinks",
)  # the maskless paths have none


def use_prefix_attention(model: nn.Module) -> bool:
    """Switch the language model of `model` to these functions, once and for good, through transformers' public
    `set_attn_implementation`; returns whether it uses them. The switch is exact (every case but the maskless one
    goes to the stock sdpa), so it stays for the model's life: no shared config is flipped per call. A language
    model on anything but `sdpa` (eager, flash, flex: their own kernels and masks) is left alone."""
    config = model.config
    text = config.get_text_config()
    if text._attn_implementation == NAME:
        return True
    if text._attn_implementation != "sdpa":
        return False
    if text is config:
        request: str | dict = NAME
    else:
        key = next((k for k in config.sub_configs if getattr(config, k, None) is text), None)
        if key is None:  # the language model's config sits deeper than one level: left on the stock sdpa
            return False
        request = {key: NAME}
    _register()
    model.set_attn_implementation(request)
    return text._attn_implementation == NAME


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


def cached_prefix_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """An `AttentionInterface` function: `prefix_mask`'s None attended without a mask, else transformers' sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length, total = query.shape[2], key.shape[2]
    if attention_mask is None and 1 < length < total and getattr(module, "is_causal", True):
        if not any(kwargs.get(k) for k in _EXTRAS):
            return after_prefix(query, key, value, total - length, kwargs.get("scaling")), None
        attention_mask = lower_right_mask(length, total, query.device)  # what None stands for, made explicit
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def after_prefix(query, key, value, prefix: int, scale: float | None = None) -> torch.Tensor:
    """Attention of the L new queries over P = `prefix` cached keys plus L new keys (causal), (B, L, H, D).

    query (B, H, L, D); key, value (B, H_kv, P + L, D). The cheaper exact way (see the module doc).
    """
    if 2 * prefix > query.shape[2] and _has_lse_kernel(query, key, value):
        return split_attention(query, key, value, prefix, scale)
    return padded_attention(query, key, value, prefix, scale)


def padded_attention(query, key, value, prefix: int, scale: float | None = None) -> torch.Tensor:
    """`after_prefix` by one causal call over P dummy queries and the L new ones, (B, L, H, D)."""
    import torch.nn.functional as F

    padded = torch.cat([query.new_zeros(*query.shape[:2], prefix, query.shape[-1]), query], dim=2)
    grouped = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(padded, key, value, is_causal=True, scale=scale, enable_gqa=grouped)
    return out[:, :, prefix:].transpose(1, 2).contiguous()


def split_attention(query, key, value, prefix: int, scale: float | None = None) -> torch.Tensor:
    """`after_prefix` by two maskless calls merged by their log-sum-exp (CPU only), (B, L, H, D)."""
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


def _has_lse_kernel(query, key, value) -> bool:
    """Whether the CPU flash kernel (which returns the log-sum-exp) takes these tensors."""
    return query.device.type == "cpu" and query.dtype in _CPU_DTYPES and key.shape[-1] == value.shape[-1]


def _register() -> None:
    """Register both functions under `NAME` (once; registering adds a name and changes no other)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, cached_prefix_attention)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(NAME, prefix_mask)
