"""Prefix KV cache: logits equal the uncached path's, the demos are computed once, the cache stays intact; the split
attention it runs with equals masked attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_demos, tiny_aim

from aim_icl import AIMError
from aim_icl.core import prefix_attention
from aim_icl.core.prefix_cache import PrefixCache
from aim_icl.testing.tiny import FAMILIES, tiny_image

QUERY = "question: what is it? answer:"
EXACT = [f for f in FAMILIES if f != "paligemma"]  # PaliGemma: the query image comes first, refused
GREEDY = dict(max_new_tokens=6, min_new_tokens=6)  # a fixed length: every step's logits are compared
# measured: cached and uncached logits differ by <= 4e-7; after a cache over other demos by >= 7e-2
TOLERANCE = 1e-4


def queries():
    """An image query, a text-only query (M-RoPE state from the first must not leak), then the first again."""
    return [(tiny_image(500), QUERY), (None, QUERY + " and"), (tiny_image(500), QUERY)]


def demo_list(aim, mode):
    """Fresh demos, plus in `aim` mode a cached DemoStates item (what a bank serves) in the middle."""
    demos = make_demos(3, seed=3)
    return [demos[0], aim.encode([demos[1]])[0], demos[2]] if mode == "aim" else demos


def traced(model, run) -> tuple[torch.Tensor, int]:
    """Next-token logits of each step `run()` generates, (steps, vocab), and how many positions its prefill
    computed (cache builds come before)."""
    lengths, logits = [], []

    def before(_module, args, kwargs):
        tensor = kwargs.get("inputs_embeds")
        lengths.append((tensor if tensor is not None else kwargs["input_ids"]).shape[1])

    def after(_module, args, kwargs, output):
        logits.append(output.logits[0, -1].float().clone())

    handles = [
        model.register_forward_pre_hook(before, with_kwargs=True),
        model.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    n = GREEDY["max_new_tokens"]  # generate's last n forwards: the prefill, then one per further new token
    return torch.stack(logits[-n:]), lengths[-n]


def shared_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """Leading positions where two prompts' token ids agree, (1, T) each."""
    n = min(a.shape[1], b.shape[1])
    differs = (a[0, :n] != b[0, :n]).nonzero()
    return int(differs[0]) if len(differs) else n


def same_logits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= TOLERANCE)


@pytest.mark.parametrize("family", EXACT)
@pytest.mark.parametrize("mode", ["aim", "text"])
def test_cached_logits_equal_uncached(family, mode):
    aim = tiny_aim(family)
    demos = demo_list(aim, mode)
    cache = PrefixCache(aim, demos, mode=mode)
    wrong = PrefixCache(aim, make_demos(3, seed=4), mode=mode)  # negative control: a cache over other demos
    for image, text in queries():
        # cached first: state an uncached call leaves behind must not be what makes it right
        logits, computed = traced(aim.model, lambda: cache.generate(image, text, **GREEDY))  # noqa: B023
        expected, prompt_length = traced(aim.model, lambda: aim.generate(image, text, demos, mode, **GREEDY))  # noqa: B023
        assert same_logits(logits, expected)
        # the demos are served from the cache: only the query's own positions are computed
        assert computed == prompt_length - cache.length
        zero_shot = aim.build_inputs(image, text, [], "zero")["input_ids"]
        if image is not None:  # an image query computes what its zero-shot prompt has past the shared head
            full = aim.build_inputs(image, text, demos, mode)["input_ids"]
            assert computed == zero_shot.shape[1] - shared_length(zero_shot, full)
        else:  # a text query may share its first words with a demo's text: no more than its zero-shot prompt
            assert computed <= zero_shot.shape[1]
        # the comparison can fail: the same query after other demos gives other logits
        assert not same_logits(traced(aim.model, lambda: wrong.generate(image, text, **GREEDY))[0], expected)  # noqa: B023


def test_queries_leave_the_cache_unchanged():
    aim = tiny_aim("qwen2_vl")
    cache = PrefixCache(aim, make_demos(4), mode="aim")
    first = cache.generate(tiny_image(1), QUERY, **GREEDY)
    snapshot = [t.clone() for layer in cache._cache.layers for t in (layer.keys, layer.values)]
    answers = [cache.generate(tiny_image(i), QUERY, **GREEDY) for i in (2, 3, 1)]
    after = [t for layer in cache._cache.layers for t in (layer.keys, layer.values)]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after))
    uncached = [aim.generate(tiny_image(i), QUERY, cache.demos, **GREEDY) for i in (1, 2, 3, 1)]
    assert [first, *answers] == uncached and answers[-1] == first


def test_zero_shot_prefix_equals_uncached():
    aim = tiny_aim("idefics3")  # a chat template: the cached prefix is the template's own head
    cache = PrefixCache(aim, mode="zero")
    for image, text in queries():
        logits, _ = traced(aim.model, lambda: cache.generate(image, text, **GREEDY))  # noqa: B023
        expected, _ = traced(aim.model, lambda: aim.generate(image, text, mode="zero", **GREEDY))  # noqa: B023
        assert same_logits(logits, expected)
    # the cache holds the template's head, "<|im_start|>User:": what the image and the text query's prompts share
    image_query, text_query = (aim.build_inputs(i, t, [], "zero")["input_ids"] for i, t in queries()[:2])
    assert cache.length == shared_length(image_query, text_query) > 0


def test_cached_prefill_attends_without_a_mask_and_only_there(monkeypatch):
    """The cached prefill takes the maskless path in every layer; the switch is made once, on the language model
    alone, and an uncached call never takes it."""
    aim = tiny_aim("llava")
    vision = aim.model.config.vision_config._attn_implementation
    calls = []
    attend = prefix_attention.after_prefix
    spy = lambda *a, **k: calls.append(a[3]) or attend(*a, **k)  # noqa: E731 - records P, then attends
    monkeypatch.setattr(prefix_attention, "after_prefix", spy)
    cache = PrefixCache(aim, make_demos(2), mode="aim")
    cache.generate(tiny_image(1), QUERY, **GREEDY)
    layers = aim.model.config.get_text_config().num_hidden_layers
    assert calls == [cache.length] * layers  # P in each layer of the one prefill; decoding is stock
    assert aim.model.config.get_text_config()._attn_implementation == prefix_attention.NAME
    assert aim.model.config.vision_config._attn_implementation == vision  # the vision tower is left alone
    aim.generate(tiny_image(1), QUERY, make_demos(2), **GREEDY)
    assert len(calls) == layers


@pytest.mark.parametrize("way", ["split_attention", "padded_attention", "after_prefix"])
@pytest.mark.parametrize(("prefix", "length", "groups"), [(1, 2, 1), (7, 9, 2), (40, 3, 4)])
def test_maskless_attention_equals_masked_attention(way, prefix, length, groups):
    g = torch.Generator().manual_seed(prefix)
    heads, dim = 4, 8
    query = torch.randn(2, heads, length, dim, generator=g)
    key, value = (torch.randn(2, heads // groups, prefix + length, dim, generator=g) for _ in range(2))
    mask = torch.ones(length, prefix + length, dtype=torch.bool).tril(prefix)  # new block at the keys' end
    expected = F.scaled_dot_product_attention(
        query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1), attn_mask=mask
    )
    out = getattr(prefix_attention, way)(query, key, value, prefix)  # (B, L, H, D)
    assert torch.allclose(out.transpose(1, 2), expected, atol=1e-6)


def test_only_a_plain_cached_prefix_skips_the_mask():
    """The mask function gives None (no mask) only for "every cached key, then causal"; else it is sdpa's."""
    from transformers.masking_utils import sdpa_mask

    plain = dict(batch_size=1, q_length=3, kv_length=5, q_offset=2, kv_offset=0)
    assert prefix_attention.prefix_mask(**plain, attention_mask=torch.ones(1, 5, dtype=torch.bool)) is None
    padded = torch.tensor([[False, True, True, True, True]])  # a left-padded prefix
    others = [
        dict(plain, attention_mask=padded),
        dict(plain, local_size=2),  # a sliding window
        dict(plain, q_offset=0),  # the block at the start of the keys (a static cache's prefill)
    ]
    for kwargs in others:
        mask = prefix_attention.prefix_mask(**kwargs)
        expected = sdpa_mask(**{**kwargs, "allow_is_causal_skip": False})
        assert mask is not None and torch.equal(mask, expected)


def test_attention_function_equals_sdpa():
    """None with more keys than queries is the lower-right causal mask; a materialised mask goes to sdpa."""
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, n, 8, generator=g) for n in (3, 5, 5))
    causal = prefix_attention.lower_right_mask(3, 5)
    padded = causal.clone()
    padded[:, 0] = False
    module = torch.nn.Module()
    for given, meant in ((None, causal), (padded[None, None], padded)):
        out, _ = prefix_attention.cached_prefix_attention(module, query, key, value, given)
        expected = F.scaled_dot_product_attention(query, key, value, attn_mask=meant).transpose(1, 2)
        assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("family", "mode", "demos", "message"),
    [
        ("paligemma", "aim", 2, "puts the query image before the demos"),
        ("llava", "icl", 2, "serves modes zero, text, aim"),
        ("llava", "zero", 2, "mode 'zero' takes no demos"),
        ("llava", "text", -1, "fused tensors can only be used in mode 'aim'"),
    ],
)
def test_refused_setups_say_why(family, mode, demos, message):
    aim = tiny_aim(family)
    items = make_demos(demos) if demos >= 0 else [torch.zeros(3, aim.backbone.embed_size)]
    with pytest.raises(AIMError, match=message):
        PrefixCache(aim, items, mode=mode)
