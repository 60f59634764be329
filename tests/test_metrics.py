"""Known-answer tests for aim_icl.eval.metrics.

Reference constants marked "toolkit" were produced once, outside this suite, with pycocoevalcap 1.2
(its Java PTBTokenizer from stanford-corenlp-3.4.1 plus ``Cider``) and sklearn 1.9.1; the suite
itself needs neither.
"""

import math

import pytest

from aim_icl.eval.metrics import (
    AGGREGATION,
    cider,
    cider_per_item,
    exact_match,
    normalize_vqa_answer,
    ptb_tokenize,
    roc_auc,
    vqa_accuracy,
)

# ------------------------------------------------------------------------------------------------- VQA


def test_vqa_leave_one_out_three_of_ten():
    # Dropping one of the 3 "yes" leaves 2 matches (2/3); dropping one of the 7 others leaves 3 (1).
    answers = ["yes"] * 3 + ["no"] * 7
    assert vqa_accuracy("yes", answers) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)
    assert vqa_accuracy("yes", answers) == pytest.approx(0.9)
    assert vqa_accuracy("no", answers) == 1.0


@pytest.mark.parametrize(
    ("matches", "expected"),
    [(0, 0.0), (1, 9 * (1 / 3) / 10), (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_match_counts(matches, expected):
    answers = ["cat"] * matches + ["dog", "bird", "fish", "cow", "pig", "hen", "elk", "ant", "bee", "owl"]
    assert vqa_accuracy("cat", answers[:10]) == pytest.approx(expected)


def test_vqa_fewer_than_ten_answers():
    # LOO over 3: drop a "cat" -> 1 match (1/3) twice; drop "dog" -> 2 matches (2/3).
    assert vqa_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    assert vqa_accuracy("cat", ["cat"]) == 0.0  # leave-one-out of a single answer leaves nobody
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("Two", ["2"] * 5 + ["3"] * 5, 1.0),  # number words -> digits, lower-case
        ("a dog.", ["dog"] * 3 + ["cat"] * 7, 0.9),  # article and final period removed
        ("dont", ["don't"] * 4 + ["no"] * 6, 1.0),  # contraction table
        ("1,000", ["1000"] * 3 + ["many"] * 7, 0.9),  # digit,digit: every punctuation mark is deleted
        ("red, white", ["red white"] * 3 + ["blue"] * 7, 0.9),  # ", " deleted (space next to it)
        ("t-shirt", ["t shirt"] * 3 + ["shirt"] * 7, 0.9),  # inner "-" becomes a space
        ("3.5", ["3.5"] * 3 + ["35"] * 7, 0.9),  # a period before a digit is kept
        ("The cat", ["cat"] * 4 + ["kitten"] * 6, 1.0),
    ],
)
def test_vqa_normalisation_when_answers_disagree(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_vqa_unanimous_answers_skip_normalisation_like_official_code():
    # Official vqaEval.py (master) only normalises when the human answers disagree.
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # whitespace is always stripped
    assert vqa_accuracy(normalize_vqa_answer("Yes"), ["yes"] * 10) == 1.0


def test_normalize_vqa_answer():
    assert normalize_vqa_answer("The Two dogs!") == "2 dogs"
    assert normalize_vqa_answer("Mr. Smith's cat") == "mr smith's cat"  # apostrophe is not in the list
    assert normalize_vqa_answer("yes/no") == "yes no"
    assert normalize_vqa_answer("youre") == "you're"
    # Upstream passes re.UNICODE as sub()'s count: at most 32 periods are removed.
    assert normalize_vqa_answer("x" + "." * 40) == "x" + "." * 8


# ----------------------------------------------------------------------------------------------- CIDEr

# Raw captions; toolkit = pycocoevalcap PTBTokenizer (Java) + Cider on the same input.
_REFS = {
    "img1": [
        "A man is riding a horse on the beach.",
        "A person rides a brown horse along the shore.",
        "Someone on horseback near the ocean.",
    ],
    "img2": [
        "Two dogs are playing with a frisbee in the park.",
        "A pair of dogs chase a frisbee on the grass.",
    ],
    "img3": [
        "A plate of food with broccoli and rice.",
        "Broccoli, rice and chicken on a white plate.",
        "A meal served on a plate.",
    ],
}
_PREDS = {
    "img1": "A man riding a horse on a beach.",
    "img2": "Two dogs play in the grass.",
    "img3": "A cat sitting on a couch.",
}
_TOOLKIT_CIDER = 1.1465680328276615
_TOOLKIT_PER_ITEM = {"img1": 1.7599381975139226, "img2": 1.3798522893111818, "img3": 0.29991361165788005}


def test_cider_matches_coco_toolkit():
    assert cider(_PREDS, _REFS) == pytest.approx(_TOOLKIT_CIDER, abs=1e-12)
    per = cider_per_item(_PREDS, _REFS)
    assert per == pytest.approx(_TOOLKIT_PER_ITEM, abs=1e-12)


def test_cider_identical_short_captions_by_hand():
    # Every n-gram is unique to its image: idf = log(2) - log(1), cosine 1 for n = 1, 2 and 0 for
    # n = 3, 4 (no such n-grams) -> mean 0.5, times 10.
    assert cider({0: "a b", 1: "c d"}, {0: ["a b"], 1: ["c d"]}) == pytest.approx(5.0)
    four = {0: "a b c d", 1: "e f g h"}
    assert cider(four, {0: ["a b c d"], 1: ["e f g h"]}) == pytest.approx(10.0)


def test_cider_clipping_and_length_penalty_by_hand():
    # Image 0: candidate "a b b" vs reference "a b"; every weight is tf * log(2) (df is 1 for
    # reference n-grams, 0 -> log(max(1, 0)) = 0 for the others), so log(2) cancels in the cosines:
    #   n=1: cand (a:1, b:2), ref (a:1, b:1); clipped dot = 1*1 + min(2,1)*1 = 2; norms sqrt5, sqrt2
    #   n=2: cand (ab:1, bb:1), ref (ab:1);   dot = 1; norms sqrt2, 1
    #   n=3, 4: reference has none -> 0
    #   penalty exp(-(2 - 1)^2 / (2 * 6^2)) on the bigram-count lengths
    item0 = 10 * math.exp(-1 / 72) * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4
    per = cider_per_item({0: "a b b", 1: "c d"}, {0: ["a b"], 1: ["c d"]})
    assert per[0] == pytest.approx(item0)
    assert per[1] == pytest.approx(5.0)
    assert cider({0: "a b b", 1: "c d"}, {0: ["a b"], 1: ["c d"]}) == pytest.approx((item0 + 5.0) / 2)


def test_cider_properties():
    refs = {0: ["a man riding a horse", "a person on a horse"], 1: ["a bowl of soup"]}
    per = cider_per_item({0: "green purple zebra", 1: "a bowl of soup"}, refs)
    assert per[0] == 0.0  # no shared n-grams
    close = cider({0: "a man riding a horse", 1: "soup"}, refs)
    far = cider({0: "a man near a car", 1: "soup"}, refs)
    assert close > far > 0
    # Tokenisation: case and punctuation do not matter, pre-tokenised input can skip it.
    assert cider({0: "A man, riding a horse!", 1: "Soup."}, refs) == pytest.approx(close)
    assert cider({0: "a man riding a horse", 1: "soup"}, refs, tokenize=False) == pytest.approx(close)
    assert cider({0: ["a man riding a horse"], 1: ["soup"]}, refs) == pytest.approx(close)


def test_cider_rejects_bad_input():
    with pytest.raises(ValueError):
        cider({0: "a"}, {1: ["a"]})
    with pytest.raises(ValueError):
        cider({}, {})
    with pytest.raises(ValueError):
        cider({0: "a"}, {0: []})


@pytest.mark.parametrize(
    ("text", "java"),
    [  # "java": output of the toolkit's PTBTokenizer + punctuation removal on the same line
        ("A dog's bone isn't here.", "a dog 's bone is n't here"),
        ("Two (2) dogs [running] {fast}.", "two -lrb- 2 -rrb- dogs -lsb- running -rsb- -lcb- fast -rcb-"),
        ("A 3-year-old boy with a black-and-white cat.", "a 3-year-old boy with a black-and-white cat"),
        ("It costs $1,000.50 at 10:30 today...", "it costs $ 1,000.50 at 10:30 today"),
        ("What?! Really?? Yes!", "what ?! really ?? yes"),
        ("I cannot believe it!!", "i can not believe it !!"),
        ("Mr. Smith lives in the U.S. with Dr. Who.", "mr. smith lives in the u.s. with dr. who"),
        (
            "He said \"hello\" and 'bye' -- and/or not; ok: fine - yes.",
            "he said hello and bye and/or not ok fine yes",
        ),
        ("We'll go, they're here; I'd say I'm fine.", "we 'll go they 're here i 'd say i 'm fine"),
        ("rock 'n' roll at 5 o'clock in the '90s", "rock 'n' roll at 5 o'clock in the '90s"),
        ("gonna wanna", "gon na wan na"),
        ("A grey colour scheme.", "a grey colour scheme"),
        ("the letter x. The end", "the letter x the end"),
    ],
)
def test_ptb_tokenize_matches_java_tokenizer(text, java):
    assert " ".join(ptb_tokenize(text)) == java


# --------------------------------------------------------------------------------------------- ROC-AUC


def test_roc_auc_hand_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # 4 pos/neg pairs, one misordered (0.4 > 0.35): 3/4 (sklearn: 0.75)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_roc_auc_ties_count_half():
    # Pairs (pos, neg): 3 x 2 = 6. 0.9 beats both negatives (2); each 0.5 ties the 0.5 negative (1/2)
    # and beats 0.2 (1): 2 * 1.5 = 3. Total 5/6 (sklearn: 0.8333).
    assert roc_auc([0, 1, 0, 1, 1], [0.5, 0.5, 0.2, 0.9, 0.5]) == pytest.approx(5 / 6)
    assert roc_auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert roc_auc([1, 0, 1, 0, 1, 0], [3, 3, 2, 2, 1, 1]) == 0.5


def test_roc_auc_label_forms_and_errors():
    assert roc_auc([False, True], [0.2, 0.7]) == 1.0
    assert roc_auc([-1, 1], [0.2, 0.7]) == 1.0  # larger label is positive, like sklearn
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1, float("nan")])


# ----------------------------------------------------------------------------------------- exact match


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("Paris", "paris", 1.0),
        ("  Paris.  ", "paris", 1.0),
        ("New   York\n", "new york", 1.0),
        ("yes!!", "Yes", 1.0),
        ("yes .", "yes", 1.0),
        ("Paris", "London", 0.0),
        ("the cat", "cat", 0.0),  # no article removal
        ("U.S.A", "usa", 0.0),  # inner punctuation is content
        ("", "", 1.0),
    ],
)
def test_exact_match(prediction, answer, expected):
    assert exact_match(prediction, answer) == expected


def test_aggregation_table():
    assert AGGREGATION == {
        "vqa_accuracy": "mean",
        "exact_match": "mean",
        "cider": "corpus",
        "roc_auc": "corpus",
    }
