"""Streaming readers of interleaved image-text corpora, one per layout, registered by name in `READERS`.

A reader does two cheap-to-separate jobs: `records(path)` yields a file's raw records in order without decoding
them (so a resumed run can fast-forward), and `parse(record)` turns one record into the document's
(image value, matched text) pairs in document order. Images are opened later, by the sample stream
(`SampleStream._document`, through `images.open_image`), so a skipped record costs no image decoding.

- `obelics`: JSONL (optionally .gz) or Parquet rows with aligned lists `images` / `texts`, one of each position null.
  An image is paired with the texts that follow it up to the next image (joined by a space); text before the first
  image is context without an image and is dropped.
- `mmc4`: JSONL documents with `text_list` and `image_info` (`image_name` or `image_base64`, `matched_text_index`,
  optional `matched_sim`); pairs in text order; matches below `min_sim` are dropped.
- `wds`: WebDataset `.tar` shards (local paths, brace patterns) whose `.json` member is an MMC4 document with base64
  images (the layout MMC4 is distributed in for training) or an OBELICS row.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aim_icl.errors import AIMError
from aim_icl.registry import Registry
from aim_icl.train.documents import SkipItem, Skips

RawPair = tuple[Any, str]  # (image value as the record gives it, matched text)


@dataclass(frozen=True)
class ReaderOptions:
    image_root: Path | None = None  # where relative image paths and MMC4 image names are looked up
    min_sim: float | None = None  # MMC4: drop image-text matches with a lower `matched_sim`


class CorpusReader(Protocol):
    name: str  # its name in READERS (--format)
    suffixes: tuple[str, ...]  # file names a directory source is searched for

    def records(self, path: str, skips: Skips) -> Iterator[Any]: ...

    def parse(self, record: Any, options: ReaderOptions, skips: Skips) -> list[RawPair]: ...


READERS: Registry[type[CorpusReader]] = Registry("corpus format")


@READERS.register("obelics")
class ObelicsReader:
    name = "obelics"
    suffixes = (".jsonl", ".jsonl.gz", ".json", ".parquet")

    def records(self, path: str, skips: Skips) -> Iterator[Any]:
        return _parquet_rows(path) if path.endswith(".parquet") else _lines(path)

    def parse(self, record: Any, options: ReaderOptions, skips: Skips) -> list[RawPair]:
        return obelics_pairs(_row(record))


@READERS.register("mmc4")
class MMC4Reader:
    name = "mmc4"
    suffixes = (".jsonl", ".jsonl.gz", ".json")

    def records(self, path: str, skips: Skips) -> Iterator[Any]:
        return _lines(path)

    def parse(self, record: Any, options: ReaderOptions, skips: Skips) -> list[RawPair]:
        return mmc4_pairs(_row(record), options, skips)


@READERS.register("wds")
class WebDatasetReader:
    name = "wds"
    suffixes = (".tar",)

    def records(self, path: str, skips: Skips) -> Iterator[Any]:
        wds = _require("webdataset")

        def count_error(err: Exception) -> bool:  # a broken shard or member is counted, never fatal
            skips["bad file"] += 1
            return True

        # one shard at a time, in the order given: the trainer orders and splits the data itself
        shard = wds.WebDataset(
            path,
            shardshuffle=False,
            nodesplitter=None,
            workersplitter=None,
            handler=count_error,
            empty_check=False,
        )
        yield from shard

    def parse(self, record: Any, options: ReaderOptions, skips: Skips) -> list[RawPair]:
        member = next((record[k] for k in ("json", "jsonl") if k in record), None)
        if member is None:
            raise SkipItem("malformed record", f"no .json member in sample {record.get('__key__')}")
        doc = _row(member)
        if "text_list" in doc:
            return mmc4_pairs(doc, options, skips)
        return obelics_pairs(doc)


def obelics_pairs(row: dict) -> list[RawPair]:
    images, texts = row.get("images"), row.get("texts")
    if not isinstance(images, list) or not isinstance(texts, list) or len(images) != len(texts):
        raise SkipItem(
            "not an OBELICS row", f"needs aligned lists 'images' and 'texts', has keys {_keys(row)}"
        )
    pairs: list[RawPair] = []
    image, following = None, []
    for img, text in [*zip(images, texts), ("<end>", None)]:
        if img is not None:  # a new image closes the previous one's text
            if image is not None and following:
                pairs.append((image, " ".join(following)))
            image, following = img, []
        elif isinstance(text, str) and text.strip() and image is not None:
            following.append(text.strip())
    return pairs


def mmc4_pairs(doc: dict, options: ReaderOptions, skips: Skips) -> list[RawPair]:
    texts, infos = doc.get("text_list"), doc.get("image_info")
    if not isinstance(texts, list) or not isinstance(infos, list):
        raise SkipItem(
            "not an MMC4 document", f"needs lists 'text_list' and 'image_info', has keys {_keys(doc)}"
        )
    pairs: list[tuple[int, RawPair]] = []
    for info in infos:
        index = info.get("matched_text_index") if isinstance(info, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(texts) or not isinstance(texts[index], str):
            skips["malformed image info"] += 1
            continue
        if options.min_sim is not None and float(info.get("matched_sim", 1.0)) < options.min_sim:
            skips["low similarity"] += 1
            continue
        image = info.get("image_base64") or info.get("image_name")
        pairs.append((index, (image, texts[index])))
    return [pair for _, pair in sorted(pairs, key=lambda p: p[0])]


def expand_sources(patterns: list[str], suffixes: tuple[str, ...]) -> list[str]:
    """Data files from paths, directories (searched for `suffixes`), glob and brace patterns, in a stable order."""
    braceexpand = _require("braceexpand").braceexpand
    files: list[str] = []
    for pattern in patterns:
        for item in braceexpand(str(pattern)):
            if glob.has_magic(item):
                found = sorted(glob.glob(item))
                if not found:
                    raise AIMError(f"no data file matches {item!r}")
                files += found
            elif Path(item).is_dir():
                files += sorted(str(p) for p in Path(item).rglob("*") if p.name.endswith(suffixes))
            elif Path(item).is_file() or "://" in item or item.startswith("pipe:"):
                files.append(item)
            else:
                raise AIMError(f"data file not found: {item}")
    if not files:
        raise AIMError(f"no data files in {', '.join(map(str, patterns))} (looked for {', '.join(suffixes)})")
    return files


def _keys(row: dict) -> str:
    names = sorted(map(str, row))
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"


def _lines(path: str) -> Iterator[bytes]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line in f:
            if line.strip():
                yield line


def _parquet_rows(path: str, batch_rows: int = 64) -> Iterator[dict]:
    parquet = _require("pyarrow.parquet", "pyarrow")
    for batch in parquet.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


def _row(record: Any) -> dict:
    if isinstance(record, dict):
        return record
    try:
        row = json.loads(record)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SkipItem("malformed record", str(err)) from None
    if not isinstance(row, dict):
        raise SkipItem("malformed record", "not a JSON object")
    return row


def _require(module: str, package: str | None = None):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module
        raise AIMError(f"reading this corpus needs {package}: pip install 'aim-icl[train]'") from None
