"""How close generated replies are to reference replies: exact match, token F1, ROUGE-L, BLEU.

Exact match and token F1 follow the SQuAD evaluation script (normalise, then compare words);
ROUGE-L comes from `rouge_score` and BLEU from `sacrebleu`, so their numbers mean what they
mean elsewhere. Each score is a mean over replies, except BLEU, which is corpus-level.

>>> scores = score_replies(["Paris."], ["The capital is Paris"])
>>> scores["exact_match"], scores["token_f1"], scores["rouge_l"]  # F1 drops "the"; ROUGE-L keeps it
(0.0, 0.5, 0.4)
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WORDS = re.compile(r"\w+")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop ASCII punctuation and a/an/the, squash spaces.

    >>> normalize_answer("The  Cat, sat!")
    'cat sat'
    """
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both are equal after `normalize_answer`, else 0.0.

    >>> exact_match("Paris!", "paris")
    1.0
    """
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of word precision and recall after `normalize_answer` (repeats counted).

    Two empty texts score 1.0, one empty text 0.0 (as in SQuAD).

    >>> token_f1("a cat sat down", "The cat sat.")  # precision 2/3, recall 2/2
    0.8
    """
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


class _WordTokenizer:
    """Lowercased `\\w+` words. rouge_score's default keeps only [a-z0-9], which erases accented and
    non-Latin letters ("café" -> "caf", Chinese -> nothing); on plain English both agree."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(text.lower())


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each prediction against its reference (rouge_score, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_WordTokenizer())
    return [
        scorer.score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0-100; one reference each, 13a tokenization, exp smoothing)."""
    from sacrebleu.metrics import BLEU

    return BLEU().corpus_score(list(predictions), [list(references)]).score


def score_replies(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """exact_match, token_f1 and rouge_l (means over replies, 0-1) and bleu (corpus, 0-100)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {}
    count = len(predictions)
    return {
        "exact_match": sum(map(exact_match, predictions, references)) / count,
        "token_f1": sum(map(token_f1, predictions, references)) / count,
        "rouge_l": sum(rouge_l(predictions, references)) / count,
        "bleu": corpus_bleu(predictions, references),
    }
