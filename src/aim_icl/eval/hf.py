"""Hugging Face `datasets` directories on disk (`DatasetDict.save_to_disk`) as task items, images read lazily.

Columns are found by their usual names: the image (`image`, `img`), the id (`question_id`, `id`, ...), the
references (`answers` as strings or `{"answer": ...}` dicts, `answer`, `captions`, `sentences`, or an integer
`label` mapped through the task's `labels`); every other string column is a prompt field (`question`, `text`).
"""

from __future__ import annotations

from pathlib import Path

from aim_icl.errors import AIMError
from aim_icl.eval.items import Item

IMAGE_COLUMNS = ("image", "img")
ID_COLUMNS = ("question_id", "id", "image_id", "cocoid", "imgid")
ANSWER_COLUMNS = ("answers", "answer", "captions", "caption", "sentences", "label")
SPLIT_ALIASES = {
    "val": ("validation", "dev"),
    "dev": ("validation", "val", "dev_seen"),
    "test": ("validation",),
    "support": ("train",),
    "query": ("test", "validation"),
}


def is_hf_dataset(path) -> bool:
    return path is not None and (Path(path) / "dataset_dict.json").is_file()


def load_hf_split(path: Path, split: str, labels: tuple[str, ...] = ()) -> list[Item]:
    try:
        import datasets
    except ImportError:
        raise AIMError("reading a Hugging Face dataset directory needs `pip install datasets`") from None
    dataset_dict = datasets.load_from_disk(str(path))
    name = next((s for s in (split, *SPLIT_ALIASES.get(split, ())) if s in dataset_dict), None)
    if name is None:
        raise AIMError(f"{path} has no split {split!r} (it has {', '.join(dataset_dict)}); pass --eval-split")
    dataset = dataset_dict[name]
    image_column = _first(IMAGE_COLUMNS, dataset.column_names, f"{path} [{name}] has no image column")
    rows = dataset.remove_columns(image_column).to_list()
    return [_item(row, i, lambda i=i: dataset[i][image_column], labels) for i, row in enumerate(rows)]


def _item(row: dict, index: int, image, labels: tuple[str, ...]) -> Item:
    id_column = next((c for c in ID_COLUMNS if c in row), None)
    answer_column = _first(ANSWER_COLUMNS, row, "the dataset has no answer column")
    fields = {k: v for k, v in row.items() if isinstance(v, str) and k not in (id_column, answer_column)}
    answers = _answers(row[answer_column], labels)
    return Item(str(row[id_column] if id_column else index), image, fields, answers)


def _answers(value, labels: tuple[str, ...]) -> tuple[str, ...]:
    """References from the usual shapes: a string, a list of strings, of `{answer|raw|text}` dicts, a label."""
    if isinstance(value, bool) or not isinstance(value, (int, str, list, dict)):
        raise AIMError(f"cannot read answers from a {type(value).__name__} column value")
    if isinstance(value, int):
        if not labels:
            raise AIMError(
                "the dataset has integer labels but the task names no answers for them (Task.labels)"
            )
        return (labels[value],)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, dict):  # a column of lists stored as a dict of lists
        value = next((value[k] for k in ("answer", "raw", "text") if k in value), [])
        return tuple(str(v) for v in value)
    return tuple(
        str(v[_first(("answer", "raw", "text"), v, "")]) if isinstance(v, dict) else str(v) for v in value
    )


def _first(names, available, message: str) -> str:
    found = next((n for n in names if n in available), None)
    if found is None:
        raise AIMError(message)
    return found
