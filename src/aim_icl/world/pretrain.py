"""Pretraining the world's MLLM in LLaVA-like stages, on single-image data only (corpora 1-3).

Stage 1 trains the vision tower to classify the scene's attributes, then freezes it (joint training from scratch
stalled in a prototype). Stage 2 trains the language model and the multimodal projector on a seeded mixture of
instruction data, text-only reading documents and described single-image samples. Like a real MLLM, the model
never sees two images in one sample.

Stage 2 is a curriculum of phases, each with its corpus proportions and learning-rate scale:
1. copying documents alone: in-context copying forms within a few hundred steps;
2. text-only reading documents with few objects (`corpora.FIRST_READING`): recalling a name from the description
   right before it forms within a few hundred steps (through connectors such as "is called" it did not form in
   3,000, measured; see `formats.BINDINGS`);
3. the mixture of corpora 1-3 with few objects and short contexts at half the learning rate (in one run at the
   full rate, colour QA stayed at chance after 1,250 steps of it; at half it reached 0.9 within 500);
4. the full mixture (up to 16 objects and 64 statements: what the 16-way task at 64 shots needs) at the schedule's
   own rate, which by then has decayed to a quarter of its peak or less.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import asdict, dataclass, replace

import torch
import transformers
from torch import nn
from tqdm.auto import tqdm

from aim_icl.world import corpora
from aim_icl.world.batches import encode_samples, pixel_values
from aim_icl.world.recipe import IMAGE_TOKENS, WorldModelConfig, build_model, build_processor
from aim_icl.world.scene import ATTRIBUTES, sample_scene

MIXTURE = {"instruction": 0.3, "reading": 0.2, "copying": 0.1, "described": 0.4}
FIRST_MIXTURE = {"instruction": 0.3, "first_reading": 0.2, "copying": 0.1, "first_described": 0.4}
CURRICULUM = (  # (steps, corpus proportions, learning-rate scale) per phase of stage 2
    (400, {"copying": 1.0}, 1.0),
    (1100, {"copying": 0.2, "first_reading": 0.8}, 1.0),
    (2500, FIRST_MIXTURE, 0.5),
    (1500, MIXTURE, 1.0),
)


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    vision_steps: int = 600
    vision_batch: int = 64
    vision_lr: float = 3e-3
    vision_warmup: int = 50
    shape_weight: float = 3.0  # shape is learnt last: small stars, crosses and diamonds look alike
    curriculum: tuple = CURRICULUM
    lm_batch: int = 32
    lm_lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 100
    weight_decay: float = 0.01

    @property
    def lm_steps(self) -> int:
        return sum(phase[0] for phase in self.curriculum)

    def with_lm_steps(self, total: int) -> PretrainConfig:
        """The same curriculum scaled to `total` steps exactly (each phase at least one step)."""
        ends, end = [], 0
        for cumulative in itertools.accumulate(phase[0] for phase in self.curriculum):
            end = max(end + 1, round(cumulative * total / self.lm_steps))
            ends.append(end)
        starts = [0, *ends[:-1]]
        scaled = tuple((e - s, *rest) for s, e, (_, *rest) in zip(starts, ends, self.curriculum))
        return replace(self, curriculum=scaled)

    def lr_at(self, step: int) -> float:
        """Warm-up and cosine over the whole of stage 2, times the current phase's scale."""
        ends = itertools.accumulate(phase[0] for phase in self.curriculum)
        phase = next((i for i, end in enumerate(ends) if step < end), len(self.curriculum) - 1)
        return self.lm_lr * self.curriculum[phase][2] * _schedule(step, self.lm_steps, self.warmup)


def pretrain(
    config: PretrainConfig | None = None, model_config: WorldModelConfig | None = None, device: str = "cpu"
):
    """Build and pretrain the world model; returns `(model, processor, record)` (record: settings and metrics)."""
    config, model_config = config or PretrainConfig(), model_config or WorldModelConfig()
    processor = build_processor()
    model = build_model(processor, model_config, seed=config.seed)
    model.to(device)
    start = time.perf_counter()
    vision = train_vision(model, processor, config)
    language = train_language(model, processor, config)
    record = {
        "pretrain": {**asdict(config), "lm_steps": config.lm_steps},
        "model": asdict(model_config),
        "metrics": {"vision_accuracy": vision, "final_loss": language},
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "device": device,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    return model.cpu().eval(), processor, record


# -- stage 1: the vision tower ------------------------------------------------------------------------------


def train_vision(model, processor, config: PretrainConfig) -> float:
    """Classify shape, colour, size and position from the patch features LLaVA reads; then freeze the tower."""
    tower = model.model.vision_tower
    device = next(tower.parameters()).device
    heads = nn.ModuleDict({k: nn.Linear(tower.config.hidden_size, len(v)) for k, v in ATTRIBUTES.items()})
    heads.to(device)
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed * 7919 + 1)
    accuracy = 0.0
    tower.train()
    for step in (bar := tqdm(range(config.vision_steps), desc="stage 1: vision tower", unit="step")):
        scenes = [sample_scene(rng) for _ in range(config.vision_batch)]
        logits = _vision_logits(tower, heads, processor, scenes)
        loss, correct = 0.0, []
        for key, values in ATTRIBUTES.items():
            target = torch.tensor([values.index(getattr(s, key)) for s in scenes], device=device)
            weight = config.shape_weight if key == "shape" else 1.0
            loss = loss + weight * nn.functional.cross_entropy(logits[key], target)
            correct.append((logits[key].argmax(-1) == target).float().mean().item())
        _set_lr(optimizer, config.vision_lr * _schedule(step, config.vision_steps, config.vision_warmup))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = 0.9 * accuracy + 0.1 * min(correct) if step else min(correct)
        bar.set_postfix(loss=f"{loss.item():.3f}", worst_acc=f"{accuracy:.2f}")
    tower.eval().requires_grad_(False)
    return round(accuracy, 4)


def _vision_logits(tower, heads, processor, scenes) -> dict[str, torch.Tensor]:
    pixels = pixel_values(processor, [s.render() for s in scenes]).to(next(tower.parameters()).device)
    hidden = tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]  # (B, 16, width): no CLS
    pooled = hidden.mean(1)
    return {k: head(pooled) for k, head in heads.items()}


# -- stage 2: language model and multimodal projector --------------------------------------------------------


def train_language(model, processor, config: PretrainConfig) -> float:
    """LM loss on the targets of a seeded mixture of corpora 1-3; the vision tower stays frozen."""
    model.model.vision_tower.requires_grad_(False)
    groups = _param_groups(model, config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.lm_lr, betas=tuple(config.betas))
    device = model.get_input_embeddings().weight.device
    batches = curriculum_batches(config)
    smoothed = None
    model.train()
    for step in (bar := tqdm(range(config.lm_steps), desc="stage 2: language model", unit="step")):
        batch = encode_samples(processor, next(batches))
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        _set_lr(optimizer, config.lr_at(step))
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.3f}")
    return round(smoothed, 4)


def curriculum_batches(config: PretrainConfig):
    """Length-bucketed batches of each phase's mixture in turn (every phase and stream seeded)."""
    rng = random.Random(config.seed * 1000 + 998)
    for phase, (steps, proportions, _) in enumerate(config.curriculum):
        batches = length_bucketed(mixture(proportions, config.seed * 10 + phase), config.lm_batch, rng)
        yield from itertools.islice(batches, steps)


def mixture(proportions: dict[str, float], seed: int):
    """Samples drawn from the corpora in these proportions; every stream is seeded."""
    streams = {name: corpora.CORPORA[name](seed * 1000 + i) for i, name in enumerate(proportions)}
    rng = random.Random(seed * 1000 + 999)
    names, weights = list(proportions), list(proportions.values())
    while True:
        yield next(streams[rng.choices(names, weights)[0]])


def length_bucketed(samples, batch_size: int, rng: random.Random, pool: int = 8):
    """Batches of similar length (less padding: about half the compute), from pools of `pool` batches."""
    while True:
        drawn = sorted(itertools.islice(samples, batch_size * pool), key=_length)
        batches = [drawn[i : i + batch_size] for i in range(0, len(drawn), batch_size)]
        rng.shuffle(batches)
        yield from batches


def _length(sample: corpora.PretrainSample) -> int:
    return len(sample.text.split()) + len(sample.target.split()) + (IMAGE_TOKENS if sample.scene else 0)


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: never on norms, biases or the (tied) embedding."""
    decay, plain = [], []
    embedding = model.get_input_embeddings().weight
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim == 2 and p is not embedding else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
