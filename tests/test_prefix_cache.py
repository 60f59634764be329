"""Prefix KV cache: greedy answers equal the uncached path's, the demos are computed once, the cache stays intact."""

from __future__ import annotations

import pytest
import torch
from conftest import make_demos, tiny_aim

from aim_icl import AIMError
from aim_icl.core.prefix_cache import PrefixCache
from aim_icl.testing.tiny import FAMILIES, tiny_image

QUERY = "question: what is it? answer:"
EXACT = [f for f in FAMILIES if f != "paligemma"]  # PaliGemma: the query image comes first, refused
GREEDY = dict(max_new_tokens=6, min_new_tokens=6)  # a fixed length: every step's greedy token is compared


def queries():
    """An image query, a text-only query (M-RoPE state from the first must not leak), then the first again."""
    return [(tiny_image(500), QUERY), (None, QUERY + " and"), (tiny_image(500), QUERY)]


def demo_list(aim, mode):
    """Fresh demos, plus in `aim` mode a cached DemoStates item (what a bank serves) in the middle."""
    demos = make_demos(3, seed=3)
    return [demos[0], aim.encode([demos[1]])[0], demos[2]] if mode == "aim" else demos


def traced(model, run) -> tuple[list[int], int]:
    """Greedy tokens `run()` generates, and how many positions its prefill computed (cache builds come before)."""
    lengths, tokens = [], []

    def before(_module, args, kwargs):
        tensor = kwargs.get("inputs_embeds")
        lengths.append((tensor if tensor is not None else kwargs["input_ids"]).shape[1])

    def after(_module, args, kwargs, output):
        tokens.append(int(output.logits[0, -1].argmax()))

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
    return tokens[-n:], lengths[-n]


@pytest.mark.parametrize("family", EXACT)
@pytest.mark.parametrize("mode", ["aim", "text"])
def test_cached_answers_equal_uncached(family, mode):
    aim = tiny_aim(family)
    demos = demo_list(aim, mode)
    cache = PrefixCache(aim, demos, mode=mode)
    for image, text in queries():
        # cached first: state an uncached call leaves behind must not be what makes it right
        tokens, computed = traced(aim.model, lambda: cache.generate(image, text, **GREEDY))  # noqa: B023
        expected, prompt_length = traced(aim.model, lambda: aim.generate(image, text, demos, mode, **GREEDY))  # noqa: B023
        assert tokens == expected
        # the demos are served from the cache: only the query's own positions are computed
        assert computed == prompt_length - cache.length
        assert cache.length >= sum(len(aim.encoder.text_ids(d.text)) for d in demos)


def test_queries_leave_the_cache_unchanged():
    aim = tiny_aim("qwen2_vl")
    cache = PrefixCache(aim, make_demos(4), mode="aim")
    first = cache.generate(tiny_image(1), QUERY, **GREEDY)
    snapshot = [t.clone() for layer in cache._cache.layers for t in (layer.keys, layer.values)]
    answers = [cache.generate(tiny_image(i), QUERY, **GREEDY) for i in (2, 3, 1)]
    after = [t for layer in cache._cache.layers for t in (layer.keys, layer.values)]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after))
    assert answers[-1] == first


def test_zero_shot_prefix_equals_uncached():
    aim = tiny_aim("idefics3")  # a chat template: the cached prefix is the template's own head
    cache = PrefixCache(aim, mode="zero")
    for image, text in queries():
        assert cache.generate(image, text, **GREEDY) == aim.generate(image, text, mode="zero", **GREEDY)
    assert cache.length > 0


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
