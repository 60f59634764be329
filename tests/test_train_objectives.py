"""The loss terms beside the LM loss: the text-match term is zero at `text` mode and pulls fused demos back to it."""

from __future__ import annotations

import torch
from conftest import make_demos

from aim_icl import AIM
from aim_icl.core.demo import Query
from aim_icl.testing.tiny import build_tiny, tiny_image
from aim_icl.train.objectives import text_match_loss


def match_loss(aim: AIM, demos, target: str) -> torch.Tensor:
    """The text-match term of one training prompt, as the trainer computes it."""
    states = aim.encode(demos)
    query = Query(tiny_image(2), "what?", states, target)
    encoded = aim.encoder.prepare([query], "aim")
    inputs = aim.finish(encoded, [aim.fuse(states)])
    text = aim.finish(encoded, [[aim.backbone.embed(s.token_ids) for s in states]])
    with torch.no_grad():
        text_logits = aim.forward(text).logits
    return text_match_loss(aim.forward(inputs).logits, text_logits, inputs["labels"])


def test_the_text_match_term_is_zero_when_fused_tokens_are_the_texts_embeddings():
    model, processor = build_tiny("llava")
    aim = AIM(model, processor, projector_name="gated")
    demos, target = make_demos(3, seed=3), "a red square"
    assert match_loss(aim, demos, target).item() == 0.0
    with torch.no_grad():
        aim.projector.gate.fill_(1.0)  # fused tokens now differ from the words
    aim.projector.requires_grad_(True)
    loss = match_loss(aim, demos, target)
    assert loss.item() > 1e-4
    loss.backward()
    assert aim.projector.gate.grad.abs().sum() > 0  # it trains the projector


def test_the_text_match_term_ignores_tokens_the_fused_prompt_predicts_better():
    """Where `aim` already beats `text` on the right token (the image decides), there is nothing to match."""
    logits = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # (1, 3, vocab 3)
    text = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, -100, 0]])  # position 1 predicts token 0
    assert text_match_loss(logits, text, labels).item() == 0.0  # fused is surer of the right token
    assert text_match_loss(text, logits, labels).item() > 0.5  # swapped: text knows better, fused must follow
