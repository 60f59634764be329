"""Writing a corpus to disk as OBELICS-style JSONL: one document per line, aligned `images` / `texts` lists.

Each position holds either an image (a PNG path relative to the JSONL file, text `null`) or a text (image `null`),
in reading order, as in OBELICS and MMC4-style web documents. Images go to `images/` beside the JSONL file.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tqdm.auto import tqdm

from aim_icl.errors import AIMError
from aim_icl.world.corpora import CORPORA, PretrainSample, SceneDocument
from aim_icl.world.scene import Scene
from aim_icl.world.vocab import IMAGE


def export_corpus(corpus: str, seed: int, n_documents: int, out_dir: Path) -> Path:
    """Write `n_documents` of `corpus` (seeded) to `out_dir/<corpus>.jsonl`; returns the JSONL path."""
    if corpus not in CORPORA:
        raise AIMError(f"unknown corpus {corpus!r}; use one of {', '.join(CORPORA)}")
    out_dir = Path(out_dir)
    path = out_dir / f"{corpus}.jsonl"
    if path.exists():
        raise AIMError(f"{path} exists; pass another --out directory or remove it first")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".jsonl.partial")
    with open(partial, "w") as f:
        documents = itertools.islice(CORPORA[corpus](seed), n_documents)
        for i, doc in enumerate(tqdm(documents, total=n_documents, desc=f"writing {corpus}", unit="doc")):
            f.write(json.dumps(_record(doc, i, out_dir)) + "\n")
    partial.rename(path)  # a complete file or none
    return path


def _record(doc: PretrainSample | SceneDocument, index: int, out_dir: Path) -> dict:
    items = _items(doc)
    images, texts = [], []
    for j, item in enumerate(items):
        if isinstance(item, Scene):
            name = f"images/{index:07d}_{j}.png"
            item.render().save(out_dir / name)
            images.append(name)
            texts.append(None)
        else:
            images.append(None)
            texts.append(item)
    return {"images": images, "texts": texts}


def _items(doc: PretrainSample | SceneDocument) -> list[Scene | str]:
    """Reading order: images and texts (a sample's text and target read as one text after its image)."""
    if isinstance(doc, SceneDocument):
        return [x for scene, text in doc.pairs for x in (scene, text)]
    before, marker, after = doc.text.partition(IMAGE)
    full_after = " ".join(t for t in (after.strip(), doc.target) if t)
    if not marker:
        return [" ".join(t for t in (before.strip(), doc.target) if t)]
    return [t for t in (before.strip(),) if t] + [doc.scene] + [full_after]
