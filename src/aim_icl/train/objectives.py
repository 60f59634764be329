"""Loss terms added to the paper's LM loss on the target text, each off (weight 0) by default.

- `identity_loss`: each fused token, read back through the input embeddings, is its own word.
- `text_match_loss`: a fused demo says at least what its text says: where the demos' text alone (`text` mode)
  predicts the target token at least as well as the fused demos, the fused prompt's next-token distribution is
  pulled to the text prompt's (KL). Where the image decides the answer (`aim` already beats `text`), it is zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aim_icl.core.demo import DemoStates


def identity_loss(
    embedding: torch.Tensor, fused: list[torch.Tensor], states: list[DemoStates]
) -> torch.Tensor:
    """Cross-entropy of each fused token read back through the input embeddings (vocab, embed) against the demo's
    own token.

    The LM loss alone lets the projector overwrite a slot whose word no training target needs verbatim; this keeps
    every slot's word while the image is added (the world's projector at weight 0.3 against 0, same LM and data:
    4-way generated names 0.80-0.90 against 0.67-0.83 from 4 to 32 shots).
    """
    logits = torch.cat(fused).float() @ embedding.float().T  # (sum n_i, vocab)
    targets = torch.cat([s.token_ids for s in states]).to(logits.device)
    return F.cross_entropy(logits, targets)


def text_match_loss(logits: torch.Tensor, text_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(text ‖ fused) of next-token distributions at the target's tokens where `text` is at least as right.

    `logits`, `text_logits`: (B, T, vocab) of the same prompts with fused demos and with the demos' own token
    embeddings at the same slots (the layouts are identical: one fused token per text token); `labels`: (B, T),
    -100 outside the target. Zero when the fused tokens equal the text's embeddings.
    """
    targets = labels[:, 1:]
    scored = targets != -100  # (B, T-1): position t predicts token t+1
    fused = F.log_softmax(logits[:, :-1][scored].float(), -1)  # (N, vocab)
    text = F.log_softmax(text_logits[:, :-1][scored].float(), -1).detach()
    right = targets[scored].unsqueeze(-1)
    text_decides = (text.gather(-1, right) >= fused.gather(-1, right)).squeeze(-1).detach()  # (N,)
    if not text_decides.any():
        return logits.sum() * 0.0
    kl = (text.exp() * (text - fused)).sum(-1)  # (N,)
    return (kl * text_decides).sum() / scored.sum().clamp_min(1)
