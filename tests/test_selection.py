"""Demo selection: reproducible random picks, RICES-style nearest images, text similarity, exclusions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_demos, tiny_aim

from aim_icl import AIMError, Demo, DemoBank
from aim_icl.bank import SELECTORS
from aim_icl.bank.select import VectorIndex, nearest
from aim_icl.core.vision import image_embeddings
from aim_icl.testing.tiny import tiny_image

QUERY = "question: what is it? answer:"


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """Twelve demos (images tiny_image(100..111)); selection only reads it, so the tests share it."""
    with DemoBank(tmp_path_factory.mktemp("selection") / "bank.sqlite", tiny_aim("llava")) as bank:
        bank.add(make_demos(12, seed=1), progress=False)
        yield bank


def keys(items) -> list[str]:
    return [item.key for item in items]


# -- random -------------------------------------------------------------------------------------------------


def test_random_selection_is_reproducible_and_distinct(bank):
    picks = keys(bank.select(None, 5, strategy="random", seed=3))
    assert picks == keys(
        bank.select(tiny_image(0), 5, strategy="random", seed=3)
    )  # the query does not matter
    assert len(set(picks)) == 5 and set(picks) <= set(bank.keys())
    assert picks != keys(bank.select(None, 5, strategy="random", seed=4))


def test_random_selection_does_not_depend_on_the_build_order(llava, tmp_path):
    demos = make_demos(8, seed=2)
    with DemoBank(tmp_path / "a.sqlite", llava) as a, DemoBank(tmp_path / "b.sqlite", llava) as b:
        a.add(demos, progress=False)
        b.add(demos[::-1], batch_size=3, progress=False)
        assert keys(a.select(None, 4, seed=11)) == keys(b.select(None, 4, seed=11))


def test_excluded_demos_are_never_picked(bank):
    excluded = bank.keys()[:10]
    for seed in range(5):
        assert set(keys(bank.select(None, 2, seed=seed, exclude=excluded))) == set(bank.keys()[10:])
    with pytest.raises(AIMError, match="cannot select 3 demos: the bank has 2 to choose from"):
        bank.select(None, 3, exclude=excluded)
    assert bank.select(None, 0) == []


# -- similarity ---------------------------------------------------------------------------------------------


def test_nearest_ranks_by_cosine_on_a_constructed_case():
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0], [10.0, 1.0]])  # (5, 2)
    query = torch.tensor([3.0, 0.1])
    # cosines to the query: 0.9994, 0.033, 0.730, -0.9994, 0.9978 (length does not count)
    assert nearest(query, pool, 3) == [0, 4, 2]
    assert nearest(query, pool, 5) == [0, 4, 2, 1, 3]
    assert SELECTORS.get("similarity")(query, pool, 2, np.random.default_rng(0)) == [0, 4]


def test_faiss_search_finds_the_same_neighbours_as_the_exact_one():
    g = torch.Generator().manual_seed(0)
    pool, queries = torch.randn(500, 32, generator=g), torch.randn(10, 32, generator=g)
    exact, with_faiss = VectorIndex(pool), VectorIndex(pool, faiss_min_pool=1)
    assert exact.faiss is None and with_faiss.faiss is not None  # faiss-cpu is installed for the tests
    for query in queries:
        assert with_faiss.search(query, 8) == exact.search(query, 8) == nearest(query, pool, 8)
        assert len(set(exact.search(query, 8))) == 8


def test_similarity_puts_the_most_similar_demo_last(bank, llava):
    query = tiny_image(104)  # the image of the bank's fifth demo
    picks = bank.select(query, 4, strategy="similarity")
    embs = image_embeddings(llava.model, llava.encoder.processor, [tiny_image(100 + i) for i in range(12)])
    cosine = torch.nn.functional.cosine_similarity(embs, embs[4:5])  # (12,), brute force over all demos
    expected = [make_demos(12, seed=1)[i].text for i in cosine.argsort(descending=True)[:4].tolist()]
    assert [p.text for p in picks] == expected[::-1]  # most similar (the same image) placed last
    assert picks[-1].text == make_demos(12, seed=1)[4].text and picks[-1].key in bank
    first = bank.select(query, 4, strategy="similarity", most_similar_last=False)
    assert keys(first) == keys(picks)[::-1]
    assert keys(bank.select(query, 3, strategy="similarity", exclude=[picks[-1].key])) == keys(picks)[:3]


def test_a_precomputed_query_embedding_selects_as_the_image_does(bank, llava):
    embedding = image_embeddings(llava.model, llava.encoder.processor, [tiny_image(7)])[0]
    by_image = bank.select(tiny_image(7), 3, strategy="similarity")
    assert keys(bank.select(embedding, 3, strategy="similarity")) == keys(by_image)


def test_selection_sees_demos_another_process_added(llava, tmp_path):
    demos = make_demos(3, seed=12)
    with (
        DemoBank(tmp_path / "bank.sqlite", llava) as reader,
        DemoBank(tmp_path / "bank.sqlite", llava) as writer,
    ):
        writer.add(demos[:2], progress=False)
        assert len(reader.select(tiny_image(0), 2, strategy="similarity")) == 2  # pool cached now
        writer.add(demos[2:], progress=False)
        assert len(reader.select(tiny_image(0), 3, strategy="similarity")) == 3


def test_text_similarity_finds_the_demo_with_the_same_text(bank):
    target = make_demos(12, seed=1)[7]
    picks = bank.select(None, 3, strategy="text_similarity", query_text=target.text)
    assert picks[-1].text == target.text
    with pytest.raises(AIMError, match="needs query_text"):
        bank.select(None, 3, strategy="text_similarity")


def test_selection_errors_are_one_line(bank, llava, tmp_path):
    with pytest.raises(AIMError, match="needs the query image"):
        bank.select(None, 2, strategy="similarity")
    with pytest.raises(AIMError, match="did you mean 'similarity'"):
        bank.select(tiny_image(0), 2, strategy="similarty")
    with DemoBank(tmp_path / "text_only.sqlite", llava) as texts:
        texts.add([Demo(None, "question: what? answer: red")], progress=False)
        with pytest.raises(AIMError, match="no demo in this bank has an image embedding"):
            texts.select(tiny_image(0), 1, strategy="similarity")


# -- selected demos in prompts ------------------------------------------------------------------------------


def test_selected_demos_go_straight_into_generate(bank, llava):
    picks = bank.select(tiny_image(3), 3, strategy="similarity")
    originals = {bank.key(d): d for d in make_demos(12, seed=1)}  # what the bank was built from
    answer = llava.generate(tiny_image(3), QUERY, demos=picks, mode="aim", max_new_tokens=6)
    assert answer == llava.generate(
        tiny_image(3), QUERY, demos=[originals[p.key] for p in picks], mode="aim", max_new_tokens=6
    )  # the stored states answer as the demos they were read from
    inputs = llava.build_inputs(tiny_image(3), QUERY, picks, "text")
    fresh = llava.build_inputs(tiny_image(3), QUERY, [Demo(None, p.text) for p in picks], "text")
    assert torch.equal(inputs["input_ids"], fresh["input_ids"])  # text mode reads the stored tokens
