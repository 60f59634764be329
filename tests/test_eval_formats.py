"""Every benchmark format read from fixture files written here (official layouts, real small images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aim_icl import AIMError
from aim_icl.eval.items import DataPaths, Item
from aim_icl.eval.task import Task
from aim_icl.eval.tasks import get_task
from aim_icl.testing.tiny import tiny_image

# ---------------------------------------------------------------------------------------------- fixture writers


def save_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tiny_image(seed).save(path)


def write_karpathy(root: Path, name: str = "dataset_coco.json", coco: bool = True) -> None:
    """Karpathy JSON: train, restval, val and test images, each with three raw captions."""
    images = []
    for i, split in enumerate(["train", "restval", "train", "val", "test", "test"]):
        entry = {"filename": f"img{i}.jpg", "imgid": i, "split": split}
        entry["sentences"] = [{"raw": f"A photo number {i}, take {j}.", "tokens": []} for j in range(3)]
        if coco:
            entry.update(filepath="val2014", cocoid=1000 + i)
        save_image(root / entry.get("filepath", "") / entry["filename"], i)
        images.append(entry)
    (root / name).write_text(json.dumps({"images": images, "dataset": "coco" if coco else "flickr30k"}))


def write_vqa(root: Path, prefix: str = "v2_") -> None:
    """VQAv2 (prefix `v2_`) or OK-VQA (prefix ``) questions + annotations for train2014 and val2014."""
    for split in ("train", "val"):
        subtype = f"{split}2014"
        questions, annotations = [], []
        for i in range(4):
            qid, image_id = (
                (10 if split == "train" else 20) * 100 + i,
                500 + i + (0 if split == "train" else 50),
            )
            questions.append({"image_id": image_id, "question": f"what is shown {i}?", "question_id": qid})
            answers = ["cat"] * 6 + ["dog"] * 4 if i % 2 else ["two"] * 10
            annotations.append(
                {"question_id": qid, "image_id": image_id, "answers": [{"answer": a} for a in answers]}
            )
            save_image(root / subtype / f"COCO_{subtype}_{image_id:012d}.jpg", image_id)
        (root / f"{prefix}OpenEnded_mscoco_{subtype}_questions.json").write_text(
            json.dumps({"data_subtype": subtype, "questions": questions})
        )
        (root / f"{prefix}mscoco_{subtype}_annotations.json").write_text(
            json.dumps({"annotations": annotations})
        )


def write_vizwiz(root: Path) -> None:
    for split in ("train", "val"):
        entries = []
        for i in range(3):
            name = f"VizWiz_{split}_{i:08d}.jpg"
            answers = ["unanswerable"] * 10 if i == 0 else ["soup"] * 7 + ["can"] * 3
            entries.append(
                {"image": name, "question": "what is this?", "answers": [{"answer": a} for a in answers]}
            )
            save_image(root / split / name, i)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{split}.json").write_text(json.dumps(entries))


def write_hateful_memes(root: Path, n_train: int = 8, n_dev: int = 6) -> None:
    """`train.jsonl` / `dev.jsonl` (id, img, label, text) with images under `img/`, labels alternating."""
    for split, n, offset in (("train", n_train, 100), ("dev", n_dev, 200)):
        lines = []
        for i in range(n):
            ident = offset + i
            save_image(root / "img" / f"{ident}.png", ident)
            lines.append(
                json.dumps({"id": ident, "img": f"img/{ident}.png", "label": i % 2, "text": f"meme {i}"})
            )
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def write_induction(root: Path, n_support: int = 6, n_query: int = 4) -> Path:
    """VL-ICL layout: `<root>/shapes/{support,query}.json`, image paths relative to `<root>`."""
    task_dir = root / "shapes"
    for split, n, offset in (("support", n_support, 0), ("query", n_query, 50)):
        entries = []
        for i in range(n):
            rel = f"shapes/images/{split}_{i}.png"
            save_image(root / rel, offset + i)
            entries.append(
                {
                    "id": f"{split}{i}",
                    "image": [rel],
                    "question": "What is it?",
                    "answer": ["dax", "wug"][i % 2],
                }
            )
        task_dir.mkdir(parents=True, exist_ok=True)
        (task_dir / f"{split}.json").write_text(json.dumps(entries))
    return task_dir


# ---------------------------------------------------------------------------------------------- tests


def load(name: str, data_dir: Path, **kwargs) -> Task:
    return get_task(name).loaded(DataPaths(data_dir, **kwargs))


@pytest.mark.parametrize("name, coco", [("coco", True), ("flickr30k", False)])
def test_karpathy_captions(tmp_path, name, coco):
    write_karpathy(tmp_path, f"dataset_{name}.json", coco)
    task = load(name, tmp_path)
    assert [i.id for i in task.train] == (
        ["1000", "1001", "1002"] if coco else ["0", "1", "2"]
    )  # restval too
    assert [i.id for i in task.test] == (["1004", "1005"] if coco else ["4", "5"])
    assert task.test[0].answers == (
        "A photo number 4, take 0.",
        "A photo number 4, take 1.",
        "A photo number 4, take 2.",
    )
    assert task.test[0].load_image().size == (48, 32)
    assert task.demo(task.train[0]).text == "Caption: A photo number 0, take 0."
    assert task.eval_split == "test"
    assert [i.id for i in get_task(name).loaded(DataPaths(tmp_path), "val").test] == (
        ["1003"] if coco else ["3"]
    )


@pytest.mark.parametrize("name, prefix", [("vqav2", "v2_"), ("okvqa", "")])
def test_vqa_questions_and_annotations(tmp_path, name, prefix):
    write_vqa(tmp_path, prefix)
    task = load(name, tmp_path)
    assert len(task.train) == len(task.test) == 4
    item = task.test[1]
    assert item.id == "2001" and item.fields == {"question": "what is shown 1?"}
    assert len(item.answers) == 10 and item.demo_answer == "cat"  # the most common of the ten
    assert item.load_image().size == (48, 32)
    assert task.query_text(item) == "Question: what is shown 1? Short answer:"
    assert task.demo(task.train[0]).text == "Question: what is shown 0? Short answer: two"


def test_vizwiz_keeps_unanswerable(tmp_path):
    write_vizwiz(tmp_path)
    task = load("vizwiz", tmp_path)
    assert task.test[0].answers == ("unanswerable",) * 10
    assert task.test[0].id == "VizWiz_val_00000000.jpg"
    assert task.test[2].load_image().size == tiny_image(2).size  # val image 2 (JPEG: pixels change)


def test_hateful_memes_labels_become_yes_no(tmp_path):
    write_hateful_memes(tmp_path)
    task = load("hateful_memes", tmp_path)
    assert [i.answers[0] for i in task.test[:2]] == ["no", "yes"]
    assert task.candidates == ("yes", "no")
    assert task.metric_names() == ("roc_auc", "likelihood_accuracy", "exact_match")
    assert task.query_text(task.test[0]) == 'is an image with written: "meme 0" on it. Is it hateful? Answer:'


def test_induction_directory_and_single_file(tmp_path):
    task_dir = write_induction(tmp_path)
    task = load("induction", task_dir)
    assert len(task.train) == 6 and len(task.test) == 4
    assert task.candidates == ("dax", "wug")  # the closed answer set, read off the data
    assert task.test[0].load_image().size == (48, 32)  # paths start at the benchmark root, the parent
    combined = tmp_path / "all.json"
    combined.write_text(
        json.dumps({s: json.loads((task_dir / f"{s}.json").read_text()) for s in ("support", "query")})
    )
    single = load("induction", combined)
    assert [i.id for i in single.test] == [i.id for i in task.test]


def test_hf_datasets_directory(tmp_path):
    import datasets

    rows = {
        "question_id": [1, 2],
        "question": ["what colour?", "how many?"],
        "answers": [[{"answer": "red"}] * 10, [{"answer": "2"}] * 10],
        "image": [tiny_image(1), tiny_image(2)],
    }
    features = datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "answers": [{"answer": datasets.Value("string")}],
            "image": datasets.Image(),
        }
    )
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(tmp_path / "okvqa_hf"))
    task = load("okvqa", tmp_path / "okvqa_hf")
    assert [i.id for i in task.test] == ["1", "2"]
    assert task.test[0].answers == ("red",) * 10 and task.test[0].fields == {"question": "what colour?"}
    assert task.test[1].load_image().size == (48, 32)  # read lazily from the arrow file


def test_hf_integer_labels_use_the_task_labels(tmp_path):
    import datasets

    split = datasets.Dataset.from_dict(
        {"id": [7, 8], "text": ["a", "b"], "label": [1, 0], "img": [tiny_image(1), tiny_image(2)]},
        features=datasets.Features(
            {
                "id": datasets.Value("int64"),
                "text": datasets.Value("string"),
                "label": datasets.Value("int64"),
                "img": datasets.Image(),
            }
        ),  # fmt: skip
    )
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(tmp_path / "hm"))
    task = load("hateful_memes", tmp_path / "hm")  # eval split `dev` falls back to `validation`
    assert [i.answers for i in task.test] == [("yes",), ("no",)]


def test_a_task_from_items_in_code():
    items = [Item(str(i), tiny_image(i), {"question": "which?"}, (["a", "b"][i % 2],)) for i in range(4)]
    task = Task("mine", "Q: {question} A:", ("exact_match",), closed_set=True).with_items(
        items[:2], items[2:]
    )
    assert task.candidates == ("a", "b")
    assert task.demo(items[1]).text == "Q: which? A: b"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "karpathy file not found"),
        (lambda root: (root / "dataset_coco.json").write_text("{"), "is not valid JSON"),
        (lambda root: (root / "dataset_coco.json").write_text("[]"), "expected a JSON object"),
        (lambda root: write_karpathy(root) or (root / "val2014" / "img4.jpg").unlink(), "--image-root"),
    ],
    ids=["missing-file", "broken-json", "wrong-file", "missing-image"],
)
def test_bad_data_is_one_clear_error(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(AIMError, match=message) as err:
        load("coco", tmp_path)
    assert "\n" not in str(err.value)


def test_file_override_and_image_root(tmp_path):
    write_hateful_memes(tmp_path / "data")
    (tmp_path / "data" / "dev.jsonl").rename(tmp_path / "elsewhere.jsonl")
    (tmp_path / "pictures").mkdir()
    (tmp_path / "data" / "img").rename(tmp_path / "pictures" / "img")
    files = {"dev": str(tmp_path / "elsewhere.jsonl")}
    with pytest.raises(AIMError, match="image not found"):
        get_task("hateful_memes").loaded(DataPaths(tmp_path / "data", None, files))
    task = get_task("hateful_memes").loaded(DataPaths(tmp_path / "data", tmp_path / "pictures", files))
    assert len(task.test) == 6
    assert task.test[0].load_image().tobytes() == tiny_image(200).tobytes()  # dev meme 200, a PNG
