"""Corpus readers and the sample stream: every layout reads back what was written, bad data is skipped and counted,
and a stream restarted from a saved position sees exactly the samples the uninterrupted stream saw."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from aim_icl.errors import AIMError
from aim_icl.testing.tiny import build_tiny
from aim_icl.train.documents import Skips
from aim_icl.train.readers import READERS, ReaderOptions, expand_sources
from aim_icl.train.samples import TextBudget
from aim_icl.train.stream import SampleRules, SampleStream
from aim_icl.train.synthetic import (
    dax_documents,
    mmc4_document,
    obelics_row,
    png_bytes,
    random_image,
    write_corpus,
    write_jsonl,
    write_parquet,
    write_wds,
)

TOKENIZER = build_tiny("llava")[1].tokenizer


def stream(
    files,
    format,
    image_root=None,
    min_shots=1,
    max_shots=3,
    per_doc=1,
    rank=0,
    world=1,
    shuffle=True,
    **rules,
):
    return SampleStream(
        [str(f) for f in files],
        READERS.get(format)(),
        ReaderOptions(None if image_root is None else Path(image_root), None),
        SampleRules(min_shots, max_shots, per_doc, shuffle_files=shuffle, **rules),
        TextBudget(TOKENIZER, 64),
        seed=3,
        rank=rank,
        world=world,
    )


def documents(s: SampleStream) -> list[list[tuple[bytes, str]]]:
    return [[(p.image.tobytes(), p.text) for p in doc.pairs] for doc in s.documents_of()]


def expected(docs) -> list[list[tuple[bytes, str]]]:
    return [[(img.tobytes(), text) for img, text in doc] for doc in docs]


def take(s: SampleStream, n: int) -> list[tuple]:
    out = []
    for sample, position in s:
        out.append(([d.text for d in sample.demos], sample.target, sample.image.tobytes(), position))
        if len(out) == n:
            return out
    return out


@pytest.mark.parametrize("format", ["obelics", "mmc4", "wds"])
def test_each_layout_reads_back_the_documents_written(tmp_path, format):
    docs = dax_documents(6, seed=2, pairs=3)
    files = write_corpus(tmp_path, format, docs, shards=1)
    assert documents(stream(files, format, tmp_path / "images")) == expected(docs)


def test_obelics_images_as_paths_file_urls_base64_and_parquet_bytes(tmp_path):
    docs = dax_documents(3, seed=4)
    rows = [
        obelics_row(d, f"d{i}", tmp_path, how)
        for i, (d, how) in enumerate(zip(docs, ["path", "file_url", "base64"]))
    ]
    assert rows[1]["images"][0].startswith("file://") and len(rows[2]["images"][0]) > 200
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert documents(stream([jsonl], "obelics", tmp_path)) == expected(docs)
    structs = []  # Hugging Face datasets' Image column: {"bytes", "path"} structs
    for doc in docs:
        images = [v for img, _ in doc for v in ({"bytes": png_bytes(img), "path": None}, None)]
        structs.append({"images": images, "texts": [v for _, text in doc for v in (None, text)]})
    parquet = write_parquet(tmp_path / "rows.parquet", structs)
    assert documents(stream([parquet], "obelics")) == expected(docs)


def test_obelics_pairs_an_image_with_the_texts_that_follow_it(tmp_path):
    img = base64.b64encode(png_bytes(random_image(1))).decode()
    row = {
        "images": [None, img, None, None, img, img, None],
        "texts": ["intro", None, "a", "b", None, None, "c"],
    }
    pairs = READERS.get("obelics")().parse(json.dumps(row).encode(), ReaderOptions(), Skips())
    assert [text for _, text in pairs] == [
        "a b",
        "c",
    ]  # intro has no image; the image before another has no text


def test_mmc4_orders_pairs_by_text_and_drops_low_similarity(tmp_path):
    doc = mmc4_document(dax_documents(1, seed=5, pairs=3)[0], "d", tmp_path)
    doc["image_info"].reverse()
    doc["image_info"][0]["matched_sim"] = 0.1
    skips = Skips()
    pairs = READERS.get("mmc4")().parse(json.dumps(doc), ReaderOptions(tmp_path, min_sim=0.2), skips)
    assert [text for _, text in pairs] == doc["text_list"][:2]
    assert skips == {"low similarity": 1}


def test_sources_expand_braces_globs_and_directories(tmp_path):
    docs = [mmc4_document(d, f"d{i}", None) for i, d in enumerate(dax_documents(4, seed=1))]
    for s in range(3):
        write_wds(tmp_path / f"shard-{s:03d}.tar", docs)
    braces = expand_sources([str(tmp_path / "shard-{000..001}.tar")], (".tar",))
    assert [Path(f).name for f in braces] == ["shard-000.tar", "shard-001.tar"]
    assert len(expand_sources([str(tmp_path / "*.tar")], (".tar",))) == 3
    assert len(expand_sources([str(tmp_path)], (".tar",))) == 3
    with pytest.raises(AIMError, match="not found"):
        expand_sources([str(tmp_path / "missing.tar")], (".tar",))


def test_bad_data_is_skipped_counted_and_never_fatal(tmp_path):
    good = dax_documents(4, seed=6)
    rows = [obelics_row(d, f"g{i}", tmp_path) for i, d in enumerate(good)]
    missing = obelics_row(good[0], "m", tmp_path)
    missing["images"][0] = "nowhere/missing.png"
    corrupt = obelics_row(good[1], "c", tmp_path)
    (tmp_path / "c-0.png").write_bytes(b"\x89PNG not really")
    remote = obelics_row(good[2], "r", tmp_path)
    remote["images"][0] = "https://example.com/cat.jpg"
    short = obelics_row(good[3][:1], "s", tmp_path)
    lines = [json.dumps(r) for r in rows[:2]] + [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"images": [None], "texts": []}),
    ]
    lines += [json.dumps(r) for r in (missing, corrupt, remote, short, *rows[2:])]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "truncated.parquet").write_bytes(b"PAR1 broken")
    s = stream([tmp_path / "truncated.parquet", path], "obelics", tmp_path, shuffle=False)
    samples = take(s, 4)
    assert [target for _, target, _, _ in samples] == [doc[-1][1] for doc in good]
    assert s.skips == {
        "malformed record": 2,  # not JSON, not an object
        "not an OBELICS row": 1,
        "missing image": 1,
        "bad image": 1,
        "remote image": 1,
        "too few pairs": 4,  # the three that lost their first image, and the one-pair document
        "bad file": 1,
    }
    assert "2 malformed record" in s.skips.summary()


def test_a_stream_restarted_at_a_position_sees_the_same_samples(tmp_path):
    files = write_corpus(tmp_path, "mmc4", dax_documents(7, seed=8, pairs=4), shards=3)
    full = take(stream(files, "mmc4", tmp_path / "images", per_doc=2), 30)  # 14 a pass: three epochs
    assert full[-1][3].epoch == 2
    for cut in (1, 5, 13, 14, 22):
        resumed = stream(files, "mmc4", tmp_path / "images", per_doc=2)
        resumed.position = full[cut - 1][3]
        assert take(resumed, 30 - cut) == full[cut:]


def test_processes_split_records_and_together_see_every_sample(tmp_path):
    files = write_corpus(tmp_path, "obelics", dax_documents(9, seed=9, pairs=3), shards=2)
    one = take(stream(files, "obelics", tmp_path / "images"), 9)
    two = [take(stream(files, "obelics", tmp_path / "images", rank=r, world=2), 9) for r in (0, 1)]
    firsts = [(demos, target) for demos, target, *_ in one]
    split = [(demos, target) for part in two for demos, target, _, p in part if p.epoch == 0]
    assert sorted(split) == sorted(firsts)
    assert len(two[0]) == len(two[1]) == 9


def test_samples_take_k_earlier_pairs_as_demos_and_a_later_pair_as_target(tmp_path):
    docs = dax_documents(20, seed=10, pairs=6)
    files = write_corpus(tmp_path, "obelics", docs)
    texts = {tuple(text for _, text in doc) for doc in docs}
    ks = set()
    for demos, target, _, _ in take(
        stream(files, "obelics", tmp_path / "images", min_shots=2, max_shots=4), 20
    ):
        ks.add(len(demos))
        k = len(demos)
        assert any(
            doc[i] == target and doc[i - k : i] == tuple(demos) for doc in texts for i in range(k, len(doc))
        )
    assert ks <= {2, 3, 4} and len(ks) > 1


@pytest.mark.parametrize("max_shots", [3, 8])
def test_last_target_with_all_earlier_pairs_as_demos(tmp_path, max_shots):
    docs = dax_documents(6, seed=11, pairs=6)
    files = write_corpus(tmp_path, "obelics", docs)
    texts = {tuple(text for _, text in doc) for doc in docs}
    taken = take(
        stream(files, "obelics", tmp_path / "images", max_shots=max_shots, targets="last", demos="all"), 6
    )
    k = min(max_shots, 5)  # every pair before the last, at most max_shots
    for demos, target, _, _ in taken:
        assert len(demos) == k
        assert any(doc[-1] == target and doc[-1 - k : -1] == tuple(demos) for doc in texts)


def test_text_budget_cuts_to_the_token_budget():
    budget = TextBudget(TOKENIZER, 4)
    cut = budget("the  cat is\nsitting on the red table")
    assert cut == "the cat is sitting"
    assert len(TOKENIZER(cut, add_special_tokens=False)["input_ids"]) == 4
    assert budget("a dog") == "a dog"


def test_a_corpus_without_any_usable_document_is_an_error(tmp_path):
    path = write_jsonl(
        tmp_path / "short.jsonl",
        [obelics_row(d[:1], f"s{i}", tmp_path) for i, d in enumerate(dax_documents(3))],
    )
    with pytest.raises(AIMError, match="no training sample"):
        take(stream([path], "obelics", tmp_path), 1)


@pytest.mark.parametrize(
    "read", ["samples", "documents"]
)  # training, and a residual projector's copy-map fit
def test_a_corpus_in_another_schema_gives_the_counts_reasons_and_a_first_example(tmp_path, read):
    files = write_corpus(
        tmp_path, "mmc4", dax_documents(5, seed=12)
    )  # read as OBELICS rows: every one refused
    s = stream(files, "obelics", tmp_path / "images")
    with pytest.raises(AIMError) as error:
        take(s, 1) if read == "samples" else list(s.documents_of())
    message = str(error.value)
    assert "\n" not in message
    assert "in the corpus (process 0: 5 skipped (5 not an OBELICS row); first: " in message
    assert "docs-0.jsonl:0 not an OBELICS row: needs aligned lists 'images' and 'texts', has keys " in message
    assert "image_info, text_list, url); check --format obelics, --image-root (" in message


def test_relative_image_paths_without_their_root_say_so(tmp_path):
    files = write_corpus(tmp_path, "obelics", dax_documents(4, seed=13))
    with pytest.raises(AIMError) as error:
        list(stream(files, "obelics", None).documents_of())  # --image-root forgotten
    message = str(error.value)
    assert message.startswith("no readable image-text pair in the corpus (process 0: ")
    assert "missing image" in message and "--image-root (not given: relative image paths start at" in message
