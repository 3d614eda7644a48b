"""The applications' scores on hand-made cases: BIO spans and F1, exact match, unigram NLL."""

from __future__ import annotations

import math

import pytest

from rnnkit.apps.metrics import (
    MICRO,
    PRF,
    bio_spans,
    entity_f1,
    exact_match,
    tag_accuracy,
    token_f1,
    unigram_nll,
)

# ---------------------------------------------------------------- spans


def test_spans_of_a_well_formed_sentence():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"]
    assert bio_spans(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("ORG", 5, 8)]


def test_i_without_b_starts_an_entity_as_conlleval_does():
    assert bio_spans(["O", "I-PER", "I-PER", "O"]) == [("PER", 1, 3)]
    assert bio_spans(["I-LOC"]) == [("LOC", 0, 1)]


def test_b_after_b_and_a_change_of_type_split_entities():
    assert bio_spans(["B-PER", "B-PER"]) == [("PER", 0, 1), ("PER", 1, 2)]
    assert bio_spans(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3)]
    assert bio_spans(["B-PER", "I-PER", "B-PER", "I-PER"]) == [("PER", 0, 2), ("PER", 2, 4)]


def test_no_entities_and_an_empty_sentence():
    assert bio_spans(["O", "O"]) == []
    assert bio_spans([]) == []


@pytest.mark.parametrize("bad", ["PER", "B-", "X-PER", "b-PER", ""])
def test_malformed_tags_raise(bad):
    with pytest.raises(ValueError, match="not a BIO tag"):
        bio_spans(["O", bad])


# ---------------------------------------------------------------- entity F1


def test_perfect_prediction_scores_one():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    scores = entity_f1(gold, gold)
    assert set(scores) == {"LOC", "ORG", "PER", MICRO}
    assert all(s.f1 == 1.0 for s in scores.values())
    assert scores[MICRO] == PRF(3, 3, 3)


def test_a_partial_span_is_both_a_miss_and_a_false_alarm():
    gold = [["B-PER", "I-PER", "O"]]
    pred = [["B-PER", "O", "O"]]  # the first name only
    s = entity_f1(gold, pred)["PER"]
    assert (s.tp, s.n_pred, s.n_gold) == (0, 1, 1)
    assert s.f1 == 0.0
    t = token_f1(gold, pred)["PER"]  # at token level half of the name counts
    assert (t.tp, t.n_pred, t.n_gold) == (1, 1, 2)
    assert t.precision == 1.0 and t.recall == 0.5
    assert t.f1 == pytest.approx(2 / 3)


def test_the_right_span_with_the_wrong_type_scores_for_neither():
    gold = [["B-ORG", "I-ORG", "O"]]
    pred = [["B-LOC", "I-LOC", "O"]]
    scores = entity_f1(gold, pred)
    assert scores["ORG"] == PRF(0, 0, 1)
    assert scores["LOC"] == PRF(0, 1, 0)
    assert scores[MICRO] == PRF(0, 1, 1)


def test_an_i_without_b_in_the_prediction_still_matches_the_span():
    gold = [["O", "B-PER", "I-PER"]]
    pred = [["O", "I-PER", "I-PER"]]
    assert entity_f1(gold, pred)["PER"] == PRF(1, 1, 1)


def test_micro_f1_pools_counts_over_types():
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],
        ["B-ORG", "O", "B-PER", "O", "B-DATE"],
    ]
    pred = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # PER right, LOC called ORG
        ["B-ORG", "O", "B-PER", "I-PER", "O"],  # ORG right, PER too long, DATE missed
    ]
    scores = entity_f1(gold, pred)
    assert scores["PER"] == PRF(1, 2, 2)
    assert scores["ORG"] == PRF(1, 2, 1)
    assert scores["LOC"] == PRF(0, 0, 1)
    assert scores["DATE"] == PRF(0, 0, 1)
    micro = scores[MICRO]
    assert micro == PRF(2, 4, 5)
    assert micro.precision == 0.5 and micro.recall == 0.4
    assert micro.f1 == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    assert list(scores) == ["DATE", "LOC", "ORG", "PER", MICRO]


def test_zero_denominators_give_zero_not_an_error():
    s = PRF(0, 0, 0)
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    assert entity_f1([["O"]], [["O"]])[MICRO] == PRF(0, 0, 0)


def test_token_f1_ignores_the_b_i_prefix_and_o():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "B-PER", "B-LOC", "O"]]
    scores = token_f1(gold, pred)
    assert scores["PER"] == PRF(2, 2, 2)
    assert scores["LOC"] == PRF(0, 1, 1)
    assert scores[MICRO] == PRF(2, 3, 3)


def test_tag_accuracy_counts_o_too():
    gold = [["B-PER", "O", "O"], ["O"]]
    pred = [["I-PER", "O", "O"], ["B-LOC"]]
    assert tag_accuracy(gold, pred) == 0.5


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="sentence 0"):
        entity_f1([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="true sentences"):
        token_f1([["O"]], [])


# ---------------------------------------------------------------- exact match, unigram NLL


def test_exact_match():
    assert exact_match(["2021-03-04", "1999-12-31"], ["2021-03-04", "1999-12-30"]) == 0.5
    assert exact_match([[1, 2]], [[1, 2]]) == 1.0
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one"):
        exact_match([], [])


def test_unigram_nll_by_hand():
    # counts a:2 b:1, V=2, add-one: P(a) = 3/5, P(b) = 2/5
    got = unigram_nll("aab", "ab")
    assert got == pytest.approx(-(math.log(0.6) + math.log(0.4)) / 2)


def test_unigram_nll_gives_unseen_tokens_their_pseudo_count():
    # counts a:2, V=3 (a, b and the unseen c): P(c) = 1 / (2 + 3)
    assert unigram_nll(["a", "a"], ["c"], vocab_size=3) == pytest.approx(math.log(5))
    # the default V counts train and test tokens: a and c
    assert unigram_nll(["a", "a"], ["c"]) == pytest.approx(math.log(4))
    assert unigram_nll([1, 1], [1], alpha=0.5, vocab_size=4) == pytest.approx(-math.log(2.5 / 4))


def test_unigram_nll_of_a_uniform_corpus_is_log_v():
    assert unigram_nll("abcd" * 5, "dcba") == pytest.approx(math.log(4))


def test_unigram_nll_bad_input():
    with pytest.raises(ValueError, match="test token"):
        unigram_nll("ab", "")
    with pytest.raises(ValueError, match="alpha"):
        unigram_nll("ab", "a", alpha=0)
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_nll("ab", "c", vocab_size=2)
