"""Small interleaved corpora written in each supported layout, for tests, benchmarks and trying the trainer.

`dax_documents` makes documents whose last text can only be predicted from an earlier pair: the first pair says
"the dax is <colour>", later pairs are fillers, and the last pair's text is the colour again under an unrelated
image. Training on them lowers the loss only if the fused demo tokens carry the earlier pair's content.
"""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = ("red", "blue", "green", "yellow", "black", "white")
FILLERS = ("a man on a road", "two dogs near a tree", "a house and a car", "people at a table")
Doc = list[tuple[Image.Image, str]]


def random_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8)), "RGB")


def dax_documents(n: int, seed: int = 0, pairs: int = 2) -> list[Doc]:
    """n documents of `pairs` (image, text) pairs; the last text is the colour the first pair named."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        colour = rng.choice(COLOURS)
        base = (seed * 1_000_003 + i) * 16
        doc = [(random_image(base), f"the dax is {colour}")]
        doc += [(random_image(base + j), rng.choice(FILLERS)) for j in range(1, pairs - 1)]
        doc.append((random_image(base + 15), colour))
        docs.append(doc)
    return docs


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def obelics_row(doc: Doc, name: str, image_dir: Path | None, how: str = "path") -> dict:
    """An OBELICS row (aligned `images` / `texts`); images as relative paths, `file://` URLs or base64 text."""
    images, texts = [], []
    for j, (image, text) in enumerate(doc):
        images += [_image_value(image, f"{name}-{j}.png", image_dir, how), None]
        texts += [None, text]
    return {"images": images, "texts": texts, "id": name}


def mmc4_document(doc: Doc, name: str, image_dir: Path | None) -> dict:
    """An MMC4 document; with `image_dir` the images are files named in `image_name`, else inline base64."""
    info = []
    for j, (image, _) in enumerate(doc):
        entry = {"matched_text_index": j, "matched_sim": 0.3}
        if image_dir is None:
            entry["image_base64"] = base64.b64encode(png_bytes(image)).decode()
        else:
            entry["image_name"] = _image_value(image, f"{name}-{j}.png", image_dir, "path")
        info.append(entry)
    return {"text_list": [text for _, text in doc], "image_info": info, "url": f"https://example.com/{name}"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_wds(path: Path, docs: list[dict]) -> Path:
    """One WebDataset shard: a `<key>.json` member per document."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for i, doc in enumerate(docs):
            sink.write({"__key__": f"doc{i:06d}", "json": json.dumps(doc).encode()})
    return path


def write_corpus(directory: Path, format: str, docs: list[Doc], shards: int = 1) -> list[str]:
    """`docs` written in `format` (obelics JSONL, mmc4 JSONL + images/, wds shards); returns the data files."""
    directory.mkdir(parents=True, exist_ok=True)
    images = directory / "images"
    images.mkdir(exist_ok=True)
    per_shard = [docs[s::shards] for s in range(shards)]
    files = []
    for s, part in enumerate(per_shard):
        names = [f"s{s}d{i}" for i in range(len(part))]
        if format == "obelics":
            files.append(
                write_jsonl(
                    directory / f"part-{s}.jsonl", [obelics_row(d, n, images) for d, n in zip(part, names)]
                )
            )
        elif format == "mmc4":
            files.append(
                write_jsonl(
                    directory / f"docs-{s}.jsonl", [mmc4_document(d, n, images) for d, n in zip(part, names)]
                )
            )
        elif format == "wds":
            files.append(
                write_wds(
                    directory / f"shard-{s:04d}.tar", [mmc4_document(d, n, None) for d, n in zip(part, names)]
                )
            )
        else:
            raise ValueError(f"unknown format {format!r}")
    return [str(f) for f in files]


def _image_value(image: Image.Image, name: str, image_dir: Path | None, how: str) -> str:
    if how == "base64" or image_dir is None:
        return base64.b64encode(png_bytes(image)).decode()
    image.save(image_dir / name)
    return (image_dir / name).resolve().as_uri() if how == "file_url" else name
