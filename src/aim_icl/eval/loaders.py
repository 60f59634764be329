"""Readers for the benchmarks' official file formats; each returns the `Item`s of one split.

Every reader takes `(paths, split)`; `paths.file(name, defaults...)` finds a file (overridable with
`--file name=PATH`), and relative image paths resolve against `--image-root` (default: the data directory).
"""

from __future__ import annotations

import json
from pathlib import Path

from aim_icl.errors import AIMError
from aim_icl.eval.items import DataPaths, Item, read_json


def karpathy_captions(paths: DataPaths, split: str, default_file: str = "dataset_coco.json") -> list[Item]:
    """Karpathy-split captions (`dataset_coco.json`, `dataset_flickr30k.json`); `train` includes `restval`.

    File name: `karpathy`. Images: `<image root>/<filepath>/<filename>` (Flickr30k has no filepath).
    """
    data = read_json(paths.file("karpathy", default_file))
    splits = {"train", "restval"} if split == "train" else {split}
    root = paths.images()[0]
    items = []
    for entry in _key(data, "images", "karpathy"):
        if entry.get("split") not in splits:
            continue
        image = root / entry.get("filepath", "") / entry["filename"]
        captions = tuple(s["raw"].strip() for s in entry["sentences"])
        items.append(Item(str(entry.get("cocoid", entry.get("imgid"))), image, {}, captions))
    return items


VQA_FILES = {
    "vqav2": ("v2_OpenEnded_mscoco_{split}2014_questions.json", "v2_mscoco_{split}2014_annotations.json"),
    "okvqa": ("OpenEnded_mscoco_{split}2014_questions.json", "mscoco_{split}2014_annotations.json"),
}


def vqa(paths: DataPaths, split: str, files: str = "vqav2") -> list[Item]:
    """VQAv2 / OK-VQA: official questions + annotations JSON (file names `<split>_questions`,
    `<split>_annotations`). Images: `<image root>/<data_subtype>/COCO_<data_subtype>_<image_id:012d>.jpg`."""
    questions_name, annotations_name = (n.format(split=split) for n in VQA_FILES[files])
    questions = read_json(paths.file(f"{split}_questions", questions_name))
    annotations = read_json(paths.file(f"{split}_annotations", annotations_name))
    answers = {a["question_id"]: a["answers"] for a in _key(annotations, "annotations", "annotations")}
    subtype = questions.get("data_subtype", f"{split}2014")
    root = paths.images()[0]
    items = []
    for q in _key(questions, "questions", "questions"):
        if q["question_id"] not in answers:
            raise AIMError(f"question {q['question_id']} has no annotation; the two files do not match")
        image = root / subtype / f"COCO_{subtype}_{q['image_id']:012d}.jpg"
        refs = tuple(a["answer"] for a in answers[q["question_id"]])
        items.append(Item(str(q["question_id"]), image, {"question": q["question"]}, refs))
    return items


def vizwiz(paths: DataPaths, split: str) -> list[Item]:
    """VizWiz-VQA annotations (`<split>.json`, also under `Annotations/`); images in `<image root>/<split>/`.
    Unanswerable questions keep their human answers (mostly `unanswerable`)."""
    entries = read_json(paths.file(split, f"{split}.json", f"Annotations/{split}.json"))
    root = paths.images()[0]
    items = []
    for e in entries:
        if "answers" not in e:
            raise AIMError(f"VizWiz {split} has no answers (the test split is scored on the server); use val")
        refs = tuple(a["answer"] for a in e["answers"])
        items.append(Item(e["image"], root / split / e["image"], {"question": e["question"]}, refs))
    return items


def hateful_memes(paths: DataPaths, split: str, labels: tuple[str, str] = ("no", "yes")) -> list[Item]:
    """Hateful Memes `<split>.jsonl` (id, img, label, text); label 1 (hateful) answers `yes`, 0 answers `no`.
    Images: `<image root>/<img>` (img is e.g. `img/42953.png`)."""
    path = paths.file(split, f"{split}.jsonl")
    root = paths.images()[0]
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise AIMError(f"{path}:{number} is not valid JSON") from None
        if "label" not in row:
            raise AIMError(f"{path} has no labels (the test split is unlabelled); use dev")
        answer = labels[int(row["label"])]
        items.append(Item(str(row["id"]), root / row["img"], {"text": row["text"]}, (answer,)))
    return items


def induction(paths: DataPaths, split: str) -> list[Item]:
    """VL-ICL-style induction data: `support.json` and `query.json` in the data directory, or one JSON file
    `{"support": [...], "query": [...]}` given as the data directory. Items: `image` (a path or a list of one),
    `question`, `answer`, optional `id`. Images resolve against `--image-root`, the data directory, or its parent
    (VL-ICL's paths start at the benchmark root)."""
    source = Path(paths.data_dir or ".")
    if source.is_file():
        entries = _key(read_json(source), split, str(source))
        base = source.parent
    else:
        entries = read_json(paths.file(split, f"{split}.json"))
        base = source
    items = [_induction_item(e, i, split) for i, e in enumerate(entries)]
    root = _image_base(paths.images(base, base.parent), items)
    return [Item(it.id, root / it.image, it.fields, it.answers) for it in items]


def _induction_item(entry: dict, index: int, split: str) -> Item:
    image = entry.get("image")
    if isinstance(image, list):
        if len(image) != 1:
            raise AIMError(
                f"{split} item {index} has {len(image)} images; only single-image items are supported"
            )
        image = image[0]
    if image is None or "answer" not in entry:
        raise AIMError(f"{split} item {index} needs an 'image' and an 'answer'")
    fields = {"question": str(entry.get("question", ""))}
    return Item(str(entry.get("id", f"{split}-{index}")), image, fields, (str(entry["answer"]),))


def _image_base(roots: list[Path], items: list[Item]) -> Path:
    """The first root under which the first item's image exists (the first root when none does)."""
    if items:
        for root in roots:
            if (root / items[0].image).is_file():
                return root
    return roots[0]


def _key(data, key: str, what: str):
    if not isinstance(data, dict) or key not in data:
        raise AIMError(f"{what}: expected a JSON object with a {key!r} list; is this the right file?")
    return data[key]
