"""One table of invariants over every family: prompt layout, aggregation, the embedding path, training, generation."""

from __future__ import annotations

import pytest
import torch
from conftest import NAMED_FAMILIES, make_demos

from aim_icl import Demo, Query
from aim_icl.testing.tiny import FAMILIES, tiny_image

QUERY = "question: what is it? answer:"


def test_every_named_family_is_covered():
    assert set(NAMED_FAMILIES) <= set(FAMILIES)


def n_image_tokens(aim, inputs) -> int:
    return int((inputs["input_ids"] == aim.backbone.image_token_id).sum())


@pytest.mark.parametrize("k", range(9))
def test_prompt_layout_across_shots(aim, k):
    demos = make_demos(k)
    n_text = [len(aim.encoder.text_ids(d.text)) for d in demos]
    built = {
        mode: aim.build_inputs(tiny_image(99), QUERY, demos if mode != "zero" else [], mode)
        for mode in aim_modes()
    }
    length = {mode: inputs["input_ids"].shape[1] for mode, inputs in built.items()}
    one_image = n_image_tokens(aim, built["zero"])
    assert one_image > 0
    # aim and text: exactly the query image, whatever k; icl: k + 1 images
    assert n_image_tokens(aim, built["aim"]) == n_image_tokens(aim, built["text"]) == one_image
    images = [tiny_image(99)] + [d.image for d in demos]
    assert n_image_tokens(aim, built["icl"]) == processor_image_tokens(aim, images)  # all k + 1 images
    # aim = zero + the demos' text tokens + one fixed separator per demo; text shares aim's layout
    assert length["aim"] == length["zero"] + sum(n_text) + k * separator_tokens(aim)
    assert length["text"] == length["aim"]
    fused_slots = built["aim"]["input_ids"] != built["text"]["input_ids"]
    assert int(fused_slots.sum()) == sum(n_text)
    if k:
        fused = torch.cat(aim.aggregate(demos))
        assert torch.allclose(built["aim"]["inputs_embeds"][fused_slots], fused, atol=1e-5)
    else:
        assert "inputs_embeds" not in built["aim"]


def processor_image_tokens(aim, images) -> int:
    """Image tokens the processor itself gives these images in one prompt (multi-image modes may shrink them)."""
    text = aim.template.image * len(images)
    inputs = aim.encoder.processor(text=[text], images=[images], return_tensors="pt")
    return n_image_tokens(aim, inputs)


def separator_tokens(aim) -> int:
    """What one demo costs beyond its text tokens, measured with a single demo: fixed and small."""
    demo = make_demos(1, seed=42)
    zero = aim.build_inputs(tiny_image(99), QUERY, [], "zero")["input_ids"].shape[1]
    one = aim.build_inputs(tiny_image(99), QUERY, demo, "aim")["input_ids"].shape[1]
    cost = one - zero - len(aim.encoder.text_ids(demo[0].text))
    assert 0 <= cost <= 2
    return cost


def aim_modes():
    return ("zero", "text", "icl", "aim")


def test_fused_count_is_the_text_length_whatever_the_image_size(aim):
    text = "question: what colour is the large circle? answer: red"
    small = aim.aggregate(Demo(tiny_image(1, size=(32, 32)), text))
    large = aim.aggregate(Demo(tiny_image(1, size=(96, 64)), text))
    n = len(aim.encoder.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert small.shape == large.shape == (n, aim.backbone.embed_size)


def test_demo_image_changes_its_fused_vectors(aim):
    text = "question: what is it? answer: a red circle"
    a = aim.aggregate(Demo(tiny_image(1), text))
    b = aim.aggregate(Demo(tiny_image(2), text))
    assert (a - b).abs().max() > 1e-4


def test_batched_aggregation_equals_one_by_one(aim):
    demos = make_demos(5, seed=3)  # texts of different lengths: the batch is padded
    batched = aim.encode(demos, batch_size=5)
    for demo, states in zip(demos, batched):
        single = aim.encode([demo])[0]
        assert torch.equal(single.token_ids, states.token_ids)
        assert (single.hidden - states.hidden).abs().max() <= 1e-5


def test_aim_without_demos_is_exactly_zero_shot(aim):
    zero = aim.build_inputs(tiny_image(5), QUERY, [], "zero")
    empty_aim = aim.build_inputs(tiny_image(5), QUERY, [], "aim")
    assert zero.keys() == empty_aim.keys()
    assert all(torch.equal(zero[k], empty_aim[k]) for k in zero)
    with torch.no_grad():
        assert torch.equal(aim.forward(zero).logits, aim.forward(empty_aim).logits)


def test_zero_shot_inputs_are_the_processor_path(aim):
    template = aim.template
    text = template.prefix + template.image + QUERY + template.suffix
    reference = aim.encoder.processor(
        text=[text],
        images=[tiny_image(5)],
        return_tensors="pt",
        add_special_tokens=template.add_special_tokens,
    )
    built = aim.build_inputs(tiny_image(5), QUERY, [], "zero")
    assert torch.equal(built["input_ids"], reference["input_ids"])
    with torch.no_grad():
        expected = aim.model(**{k: v for k, v in reference.items() if k != "labels"}).logits
        assert torch.equal(aim.forward(built).logits, expected)


def test_virtual_tokens_holding_text_embeddings_reproduce_text_mode(aim):
    """The inputs_embeds path (image merging, positions, masks) equals the normal path token for token."""
    demos = make_demos(3)
    as_vectors = [aim.backbone.embed(aim.encoder.text_ids(d.text)) for d in demos]
    text = aim.build_inputs(tiny_image(5), QUERY, demos, "text")
    virtual = aim.build_inputs(tiny_image(5), QUERY, as_vectors, "aim")
    assert "inputs_embeds" in virtual
    with torch.no_grad():
        expected = aim.model(**text).logits
        assert (aim.forward(virtual).logits - expected).abs().max() < 1e-4


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.startswith("qwen")])
def test_mrope_positions_equal_the_normal_path(aim):
    assert aim.backbone.rope_index is not None
    demos = make_demos(2)
    text = aim.build_inputs(tiny_image(5), QUERY, demos, "text")
    virtual = aim.build_inputs(tiny_image(5), QUERY, demos, "aim")
    expected = aim.backbone.positions(text)  # the processor path's ids: the model's own rope index
    assert torch.equal(aim.backbone.positions(virtual), expected)
    assert (expected[1:] != expected[:1]).any()  # image tokens really carry 2-D positions


@pytest.mark.parametrize("mode", aim_modes())
def test_training_forward_reaches_only_the_projector(aim, mode):
    demos = make_demos(2) if mode != "zero" else []
    inputs = aim.build_inputs(tiny_image(5), QUERY, demos, mode, target="red circle")
    answer = aim.encoder.answer_ids(QUERY + aim.template.suffix, "red circle")
    target_len = len(answer) + (aim.encoder.tokenizer.eos_token_id is not None)
    assert int((inputs["labels"] != -100).sum()) == target_len
    aim.projector.zero_grad()
    loss = aim.forward(inputs).loss
    assert torch.isfinite(loss)
    assert loss.requires_grad == (mode == "aim")  # only fused tokens depend on a trainable parameter
    if mode == "aim":
        loss.backward()
        assert all(p.grad is None for p in aim.model.parameters())
        grads = [p.grad for p in aim.projector.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0
        aim.projector.zero_grad(set_to_none=True)


def test_batched_training_inputs_match_single(aim):
    demos = make_demos(3)
    queries = [
        Query(tiny_image(5), QUERY, demos[:1], "red"),
        Query(tiny_image(6), QUERY, demos, "blue circle"),
    ]
    batch = aim.build_batch(queries, mode="aim")
    with torch.no_grad():
        batched = aim.forward(batch).logits
        for row, query in enumerate(queries):
            single = aim.build_batch([query], mode="aim")
            n = single["input_ids"].shape[1]
            assert (aim.forward(single).logits[0] - batched[row, :n]).abs().max() < 1e-4


@pytest.mark.parametrize("mode", aim_modes())
def test_generate_in_every_mode(aim, mode):
    demos = make_demos(2) if mode != "zero" else []
    answer = aim.generate(tiny_image(5), QUERY, demos, mode=mode, max_new_tokens=4)
    # the documented path: build_inputs' output straight into the model's own generate (every family takes it)
    inputs = aim.build_inputs(tiny_image(5), QUERY, demos, mode)
    with torch.no_grad():
        out = aim.model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=aim.encoder.pad_id)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) > 0
    assert answer == aim.encoder.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


@pytest.mark.parametrize("mode", aim_modes())
def test_a_list_of_queries_is_answered_as_each_query_alone(aim, mode):
    """One generation path: a list goes through left-padded batches, each answer equal to the query's alone."""
    queries = [
        Query(
            tiny_image(20 + i, (48 - 8 * i, 32 + 8 * i)),  # prompts of different lengths: rows are padded
            QUERY + " big" * i,
            [] if mode == "zero" else make_demos(1 + i, seed=i),
        )
        for i in range(3)
    ]
    alone = [aim.generate(q, mode=mode, max_new_tokens=3) for q in queries]
    assert all(isinstance(answer, str) for answer in alone)
    assert aim.generate(queries, mode=mode, max_new_tokens=3) == alone
    assert aim.generate(queries, mode=mode, max_new_tokens=3, batch_size=2) == alone
    # parallel lists, the demos given per query
    images, texts, demos = ([getattr(q, f) for q in queries] for f in ("image", "text", "demos"))
    assert aim.generate(images, texts, demos, mode=mode, max_new_tokens=3) == alone


@pytest.mark.parametrize("mode", aim_modes())
def test_score_is_the_log_likelihood_of_each_candidate(aim, mode):
    demos = make_demos(2) if mode != "zero" else []
    candidates = ["red", "blue circle", "dog"]
    scores = aim.score(tiny_image(5), QUERY, candidates, demos, mode=mode)
    assert scores.shape == (3,) and (scores < 0).all()
    for candidate, score in zip(candidates, scores):  # equals the loss of that answer alone, times its length
        inputs = aim.build_batch([Query(tiny_image(5), QUERY, demos, candidate)], mode=mode, eos=False)
        with torch.no_grad():
            loss = aim.forward(inputs).loss
        n = len(aim.encoder.answer_ids(QUERY + aim.template.suffix, candidate))
        assert torch.allclose(score, -loss * n, atol=1e-3)
