"""Each reply score against values worked out by hand (and the packages' conventions for theirs)."""

from __future__ import annotations

import math

import pytest

from easyllm.eval.text_metrics import (
    corpus_bleu,
    exact_match,
    normalize_answer,
    rouge_l,
    score_replies,
    token_f1,
)


def test_normalisation_is_squads():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # only whole-word articles go


def test_exact_match_after_normalisation():
    assert exact_match("The Paris!", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_counts_shared_words():
    # "a cat sat down" -> [cat, sat, down]; "The cat sat." -> [cat, sat]: precision 2/3, recall 1
    assert token_f1("a cat sat down", "The cat sat.") == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    # a repeated word is shared only as often as both have it: [cat, cat] vs [cat]: precision 1/2
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "cat") == 0.0  # an empty side: equal or not


def test_rouge_l_is_the_longest_common_subsequence_f_measure():
    # LCS(the cat lay on the mat, the cat sat on the mat) = 5 of 6 words each side
    assert rouge_l(["the cat lay on the mat"], ["the cat sat on the mat"]) == [pytest.approx(5 / 6)]
    # "cat the" vs "the cat sat": LCS 1; precision 1/2, recall 1/3
    assert rouge_l(["cat the"], ["the cat sat"]) == [
        pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    ]
    # words with accents stay words (rouge_score's own tokenizer would cut "café" to "caf")
    assert rouge_l(["Un café"], ["un café noir"]) == [pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))]


def test_bleu_is_sacrebleus_corpus_bleu():
    # only the n-grams reaching "today" are missing from the reference: p_n = 6/7, 5/6, 4/5, 3/4;
    # no brevity penalty
    hypothesis, reference = "the cat sat on the mat today", "the cat sat on the mat"
    assert corpus_bleu([hypothesis], [reference]) == pytest.approx(100 * (3 / 7) ** 0.25)
    # a 5-word prefix: all precisions 1, brevity penalty exp(1 - 6/5)
    assert corpus_bleu(["the cat sat on the"], [reference]) == pytest.approx(100 * math.exp(-0.2))
    # corpus level: n-gram counts are summed over replies before the ratio, not averaged;
    # p_n = 12/13, 10/11, 8/9, 6/7
    both = corpus_bleu([hypothesis, reference], [reference, reference])
    assert both == pytest.approx(100 * (12 / 13 * 10 / 11 * 8 / 9 * 6 / 7) ** 0.25)


def test_score_replies_averages_per_reply_scores():
    scores = score_replies(["Paris.", "I am Lumen"], ["The capital is Paris", "i am lumen!"])
    assert scores["exact_match"] == 0.5
    # [paris] vs [capital, is, paris]: precision 1, recall 1/3; the second reply matches exactly
    assert scores["token_f1"] == pytest.approx((2 * 1 * (1 / 3) / (1 + 1 / 3) + 1) / 2)
    # ROUGE keeps "the"
    assert scores["rouge_l"] == pytest.approx((2 * 1 * (1 / 4) / (1 + 1 / 4) + 1) / 2)
    assert score_replies([], []) == {}
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        score_replies(["a"], ["a", "b"])
