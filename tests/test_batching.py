"""Batched generation and scoring equal one query at a time, over families with different image inputs and positions."""

from __future__ import annotations

import pytest
import torch
from conftest import make_demos, tiny_aim

from aim_icl import AIMError
from aim_icl.core.batching import (
    answer_ids,
    collate,
    generate_batch,
    generate_reading,
    score_batch,
    score_read,
)
from aim_icl.core.demo import Query
from aim_icl.testing.tiny import tiny_image

# LLaVA (one image tensor per image), Qwen2-VL (flat patches, M-RoPE), SmolVLM (padded image stacks per row),
# Gemma 3 (token types, bidirectional image attention), PaliGemma (1-indexed positions, prefix-LM mask)
BATCH_FAMILIES = ("llava", "qwen2_vl", "smolvlm", "gemma3", "paligemma")
MODES = ("zero", "text", "icl", "aim")


def queries(mode: str, n: int = 3) -> list[tuple]:
    """Queries whose prompts differ in length (text, image size, demo count), so rows need padding."""
    return [
        (
            tiny_image(20 + i, (48 - 8 * i, 32 + 8 * i)),
            "what is it?" + " big" * i,
            [] if mode == "zero" else make_demos(1 + i, seed=i),
        )
        for i in range(n)
    ]


def full_prompt_scores(aim, image, text, candidates, demos, mode) -> torch.Tensor:
    """The reference: each candidate appended to its own copy of the prompt, one forward, log-likelihoods summed."""
    inputs = aim.build_batch([Query(image, text, demos, c) for c in candidates], mode=mode, eos=False)
    logits = aim.forward(inputs).logits[:, :-1].float()  # (B, T-1, vocab): position t predicts token t+1
    labels = inputs["labels"][:, 1:]
    logprobs = logits.log_softmax(-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logprobs * (labels != -100)).sum(-1).cpu()


@pytest.mark.parametrize("family", BATCH_FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_batched_generation_equals_one_by_one(family, mode):
    aim = tiny_aim(family)
    inputs = [aim.build_inputs(image, text, demos, mode) for image, text, demos in queries(mode)]
    one_by_one = [aim.generate_from(x, max_new_tokens=6) for x in inputs]
    assert generate_batch(aim, inputs, max_new_tokens=6) == one_by_one


@pytest.mark.parametrize("family", BATCH_FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_batched_scores_equal_one_by_one(family, mode):
    """Prompts read once with their cache, each answer on it, equal each answer scored on its full prompt."""
    aim = tiny_aim(family)
    candidates = ["yes", "no", "red cat"]
    asked = queries(mode)
    alone = [full_prompt_scores(aim, image, text, candidates, demos, mode) for image, text, demos in asked]
    prompts = [aim.build_inputs(image, text, demos, mode) for image, text, demos in asked]
    answers = [answer_ids(aim, text, candidates) for _, text, _ in asked]
    _, read = generate_reading(aim, prompts, max_new_tokens=3)  # the prompts as generation read them
    # other shapes, masked attention and a split pass sum in another order: float32 rounding only
    for batched in [score_batch(aim, prompts, answers, max_rows=n) for n in (None, 4)] + [
        score_read(aim, read, answers)
    ]:
        assert len(batched) == len(asked)
        for a, b in zip(alone, batched):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=2e-5)
    torch.testing.assert_close(
        aim.score(*asked[1][:2], candidates, asked[1][2], mode), alone[1], atol=1e-4, rtol=0
    )
    # the tolerance is far below what a wrong prompt changes: query 0's answers read after query 2's prompt
    assert (score_batch(aim, prompts[2:], answers[:1])[0] - alone[0]).abs().max() > 1e-2


@pytest.mark.parametrize("family", ("llava", "qwen2_vl", "gemma3"))
def test_left_padded_rows_match_their_unpadded_logits(family):
    """Next-token logits of a left-padded row match the row alone; attending to the padding would change them."""
    aim = tiny_aim(family)
    inputs = [aim.build_inputs(image, text, demos, "aim") for image, text, demos in queries("aim")]
    alone = torch.cat([aim.forward(x).logits[:, -1] for x in inputs])  # (B, vocab)
    batch = collate(aim, inputs, padding_side="left", positions=True)
    # masked attention over padded rows sums in another order: float32 rounding only
    torch.testing.assert_close(aim.forward(batch).logits[:, -1], alone, atol=1e-4, rtol=1e-4)
    unmasked = {**batch, "attention_mask": torch.ones_like(batch["attention_mask"])}
    wrong = aim.forward(unmasked).logits[:, -1]
    assert (wrong[:-1] - alone[:-1]).abs().max() > 1e-3  # the longest (last) row has no padding


def test_collate_pads_each_family_input_as_its_processor_does():
    aim = tiny_aim("smolvlm")
    # image splitting gives these two images 3 and 5 sub-images: rows differ in image count and prompt length
    few, many = (aim.build_inputs(tiny_image(i, size), "what?") for i, size in ((0, (32, 64)), (1, (48, 32))))
    batch = collate(aim, [few, many])
    lengths = [x["input_ids"].shape[1] for x in (few, many)]
    width = max(lengths)
    assert batch["input_ids"].shape == (2, width)
    for row, n in enumerate(lengths):  # left padding: the real tokens end every row
        assert batch["attention_mask"][row].tolist() == [0] * (width - n) + [1] * n
        assert (batch["input_ids"][row, : width - n] == aim.encoder.pad_id).all()
    # the shorter image stack is padded with all-zero images, as the processor pads a batch
    n_few, n_many = few["pixel_values"].shape[1], many["pixel_values"].shape[1]
    assert n_few < n_many
    assert batch["pixel_values"].shape[:2] == (2, n_many)
    assert batch["pixel_values"][0, n_few:].abs().sum() == 0
    torch.testing.assert_close(batch["pixel_values"][0, :n_few], few["pixel_values"][0])
    torch.testing.assert_close(batch["pixel_values"][1], many["pixel_values"][0])


def test_a_batch_may_mix_fused_and_plain_queries():
    aim = tiny_aim("llava")
    (image, text, demos), *_ = queries("aim")
    inputs = [aim.build_inputs(image, text, demos, "aim"), aim.build_inputs(image, text)]
    assert "inputs_embeds" not in inputs[1]
    expected = [aim.generate_from(x, max_new_tokens=6) for x in inputs]
    assert generate_batch(aim, inputs, max_new_tokens=6) == expected


def test_several_answers_per_query_follow_each_other():
    aim = tiny_aim("llava")
    inputs = [aim.build_inputs(image, text, demos, "text") for image, text, demos in queries("text", n=2)]
    greedy = [aim.generate_from(x, max_new_tokens=4) for x in inputs]
    answers = generate_batch(aim, inputs, max_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert len(answers) == 4
    # beam search's best beam is not always greedy's answer, so compare beams with beams
    for i, x in enumerate(inputs):
        assert answers[2 * i : 2 * i + 2] == generate_batch(
            aim, [x], max_new_tokens=4, num_beams=2, num_return_sequences=2
        )
    assert greedy == generate_batch(aim, inputs, max_new_tokens=4)


def test_generation_stops_at_end_of_sequence_per_row():
    """A row that ends early gets pad tokens after its EOS in the batch; they must not reach its answer."""
    aim = tiny_aim("llava")
    inputs = [aim.build_inputs(image, text, demos, "text") for image, text, demos in queries("text")]
    pad = aim.encoder.pad_id
    first = aim.model.generate(**inputs[0], max_new_tokens=1, do_sample=False, pad_token_id=pad)[0, -1]
    # make row 0's first answer token an end-of-sequence token: row 0 stops at once, the others go on
    stopped = generate_batch(aim, inputs, max_new_tokens=6, eos_token_id=int(first))
    assert stopped == [aim.generate_from(x, max_new_tokens=6, eos_token_id=int(first)) for x in inputs]
    # row 0 ends with that (ordinary, so printed) token; the others run on past it
    assert stopped[0] == aim.encoder.tokenizer.decode([first]).strip()
    assert all(len(answer) > len(stopped[0]) for answer in stopped[1:])


def test_queries_of_one_batch_need_the_same_inputs():
    aim = tiny_aim("llava")
    with pytest.raises(AIMError, match="same inputs"):
        collate(aim, [aim.build_inputs(tiny_image(0), "what?"), aim.build_inputs(None, "what?")])
    with pytest.raises(AIMError, match="at least one"):
        generate_batch(aim, [])


def test_aim_score_takes_a_list_and_scores_each_query_as_alone():
    aim = tiny_aim("qwen2_vl")
    asked = queries("aim")
    candidates = [["yes", "no"], ["red cat"], ["a", "b", "c"]]
    alone = [aim.score(image, text, c, demos, "aim") for (image, text, demos), c in zip(asked, candidates)]
    listed = aim.score([Query(*q) for q in asked], candidates=candidates, mode="aim")
    images, texts, demos = zip(*asked)
    shared = aim.score(list(images), list(texts), ["yes", "no"], list(demos), mode="aim", batch_size=2)
    assert len(listed) == len(shared) == len(asked)
    for a, b in zip(alone, listed):  # another batch shape: float32 rounding only
        torch.testing.assert_close(b, a, atol=1e-4, rtol=2e-5)
    torch.testing.assert_close(shared[0], alone[0], atol=1e-4, rtol=2e-5)
    torch.testing.assert_close(
        shared[2][:2], aim.score(*asked[2][:2], ["yes", "no"], asked[2][2]), atol=1e-4, rtol=0
    )


def test_a_list_may_mix_queries_with_and_without_an_image():
    aim = tiny_aim("llava")
    asked = [Query(tiny_image(1), "what?"), Query(None, "what is it?"), Query(tiny_image(2), "what is it?")]
    alone = [aim.generate(q, mode="zero", max_new_tokens=4) for q in asked]
    assert aim.generate(asked, mode="zero", max_new_tokens=4) == alone
    beams = aim.generate(asked[:2], mode="zero", max_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert [len(b) for b in beams] == [2, 2]
    assert beams[0] == generate_batch(
        aim,
        [aim.build_inputs(tiny_image(1), "what?", mode="zero")],
        max_new_tokens=4,
        num_beams=2,
        num_return_sequences=2,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([tiny_image(0), tiny_image(1)], "what?"), "one text with a list of images"),
        (([tiny_image(0)], ["what?", "why?"]), "one image per text"),
        ((None, ["what?", "why?"], [[], [], []]), "3 lists, 2 queries"),
        ((Query(None, "what?"), "why?"), "not both"),
        ((tiny_image(0), 7), "text must be a string or a list"),
        (([tiny_image(0), tiny_image(1)],), "a list of images with a list of texts"),
    ],
)
def test_queries_given_wrongly_are_one_line(args, message):
    with pytest.raises(AIMError, match=message):
        tiny_aim("llava").generate(*args, mode="text")


def test_no_queries_no_answers():
    assert tiny_aim("llava").generate([]) == [] == tiny_aim("llava").score([], candidates=["yes"])
