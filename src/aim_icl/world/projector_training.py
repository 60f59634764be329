"""Provisional AIM projector training on the world's interleaved documents (corpus 4).

Within each document the earlier (image, text) pairs become fused tokens, the last pair stays a real image plus
text, and the loss is the LM loss on that last text; only the projector learns. The project's training pipeline
(`aim-icl train`) replaces this loop; it stays small on purpose.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from aim_icl.core.aim import AIM
from aim_icl.core.demo import Demo
from aim_icl.world.corpora import Document, interleaved
from aim_icl.world.measure import fit_copy_map


@dataclass(frozen=True)
class ProjectorTrainConfig:
    seed: int = 0
    steps: int = 1300
    batch: int = 32
    lr: float = 3e-3
    fit_demos: int = 400


def train_projector(aim: AIM, config: ProjectorTrainConfig = ProjectorTrainConfig()) -> dict:
    """Fit the copy map, then train the projector with AdamW; returns a record of settings and the final loss."""
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    fit_copy_map(aim, interleaved(config.seed * 1000 + 1), config.fit_demos)
    documents = interleaved(config.seed * 1000 + 2)
    optimizer = torch.optim.AdamW(aim.projector.parameters(), lr=config.lr, weight_decay=0.0)
    aim.projector.train()
    smoothed = None
    for _ in (bar := tqdm(range(config.steps), desc="projector", unit="step")):
        inputs = aim.build_batch([document_query(d) for d in itertools.islice(documents, config.batch)])
        loss = aim.forward(inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.3f}")
    aim.projector.eval()
    return {
        "projector_training": asdict(config),
        "final_loss": round(smoothed, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


def document_query(document: Document) -> tuple:
    """(image, text, demos, target) for `build_batch`: earlier pairs as demos, the last text as the target."""
    *earlier, (scene, text) = document.pairs
    return scene.render(), "", [Demo(s.render(), t) for s, t in earlier], text
