"""Answer normalisation and accuracy metrics for VQA-style benchmarks (VQAv2, TextVQA, ST-VQA, TextCaps).

Same names and call conventions as upstream's ``llava/eval/m4c_evaluator.py``:

- ``EvalAIAnswerProcessor()(text) -> str``: the answer normalisation of the official VQA evaluation, as
  the EvalAI VQA challenge applies it to submitted answers.
- ``*Evaluator().eval_pred_list(pred_list) -> float`` where ``pred_list`` is a list of
  ``{"pred_answer": str, "gt_answers": [str, ...]}`` (TextCaps: ``gt_answers`` are reference captions).
  The return value is a fraction in [0, 1].

Normalisation, in order (it reproduces the official behaviour, quirks included, so that numbers match):

1. lowercase; delete every ``,`` and ``?``; split a possessive ``'s`` off its word (``cat's`` -> ``cat 's``);
   turn newlines/tabs into spaces; strip.
2. punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: a mark that touches a space somewhere in the
   answer is deleted everywhere, otherwise it becomes a space (``t-shirt`` -> ``t shirt``,
   ``yes - no`` -> ``yes  no``).
3. a period is deleted unless a digit follows it (``3.5`` stays). The official code passes ``re.UNICODE``
   where ``re.sub`` expects ``count``, so at most 32 periods are deleted; kept for parity.
4. per whitespace word: number words ``none``/``zero`` .. ``ten`` become digits, the articles
   ``a an the`` are dropped, and apostrophe-less contractions get their apostrophe (``dont`` -> ``don't``).
   Words are re-joined with single spaces.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Sequence

__all__ = [
    "EvalAIAnswerProcessor",
    "TextVQAAccuracyEvaluator",
    "STVQAAccuracyEvaluator",
    "STVQAANLSEvaluator",
    "TextCapsBleu4Evaluator",
    "vqa_soft_score",
    "levenshtein",
]


def _pairs(table: str) -> Dict[str, str]:
    items = table.split()
    assert len(items) % 2 == 0
    return dict(zip(items[0::2], items[1::2]))


# Apostrophe-less spelling -> official spelling. Entries of the official table that contain capitals
# ("Im", "Ive", "Id've", ...) can never fire (the text is lowercased first) and are left out.
_CONTRACTIONS = _pairs("""
    aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't  couldn'tve couldn't've
    couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't  hadnt hadn't  hadnt've hadn't've
    hadn'tve hadn't've  hasnt hasn't  havent haven't  hed he'd  hed've he'd've  he'dve he'd've  hes he's
    howd how'd  howll how'll  hows how's  isnt isn't  itd it'd  itd've it'd've  it'dve it'd've  itll it'll
    let's let's  maam ma'am  mightnt mightn't  mightnt've mightn't've  mightn'tve mightn't've
    mightve might've  mustnt mustn't  mustve must've  neednt needn't  notve not've  oclock o'clock
    oughtnt oughtn't  ow's'at 'ow's'at  'ows'at 'ow's'at  'ow'sat 'ow's'at  shant shan't
    shed've she'd've  she'dve she'd've  she's she's  shouldve should've  shouldnt shouldn't
    shouldnt've shouldn't've  shouldn'tve shouldn't've  somebody'd somebodyd  somebodyd've somebody'd've
    somebody'dve somebody'd've  somebodyll somebody'll  somebodys somebody's  someoned someone'd
    someoned've someone'd've  someone'dve someone'd've  someonell someone'll  someones someone's
    somethingd something'd  somethingd've something'd've  something'dve something'd've
    somethingll something'll  thats that's  thered there'd  thered've there'd've  there'dve there'd've
    therere there're  theres there's  theyd they'd  theyd've they'd've  they'dve they'd've
    theyll they'll  theyre they're  theyve they've  twas 'twas  wasnt wasn't  wed've we'd've
    we'dve we'd've  weve we've  werent weren't  whatll what'll  whatre what're  whats what's
    whatve what've  whens when's  whered where'd  wheres where's  whereve where've  whod who'd
    whod've who'd've  who'dve who'd've  wholl who'll  whos who's  whove who've  whyll why'll
    whyre why're  whys why's  wont won't  wouldve would've  wouldnt wouldn't  wouldnt've wouldn't've
    wouldn'tve wouldn't've  yall y'all  yall'll y'all'll  y'allll y'all'll  yall'd've y'all'd've
    y'alld've y'all'd've  y'all'dve y'all'd've  youd you'd  youd've you'd've  you'dve you'd've
    youll you'll  youre you're  youve you've
""")

_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBER_WORDS["none"] = "0"

_ARTICLES = frozenset({"a", "an", "the"})

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")

# Official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) lookahead that never blocks a
# period, so in effect a period is removed whenever no digit follows it.
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_OFFICIAL_PERIOD_LIMIT = 32  # re.UNICODE == 32, passed as `count` by the official code


class EvalAIAnswerProcessor:
    """Normalises a free-form answer the way the VQA/EvalAI evaluation does (see the module docstring)."""

    CONTRACTIONS = _CONTRACTIONS
    NUMBER_MAP = _NUMBER_WORDS
    ARTICLES = _ARTICLES
    PUNCTUATIONS = _PUNCTUATION

    def word_tokenize(self, word: str) -> str:
        word = word.lower().replace(",", "").replace("?", "").replace("'s", " 's")
        return word.strip()

    def process_punctuation(self, in_text: str) -> str:
        has_digit_comma = _DIGIT_COMMA_DIGIT.search(in_text) is not None
        out = in_text
        for mark in self.PUNCTUATIONS:
            touches_space = (mark + " ") in in_text or (" " + mark) in in_text
            out = out.replace(mark, "" if (touches_space or has_digit_comma) else " ")
        return _PERIOD.sub("", out, count=_OFFICIAL_PERIOD_LIMIT)

    def process_digit_article(self, in_text: str) -> str:
        words: List[str] = []
        for word in in_text.lower().split():
            word = self.NUMBER_MAP.get(word, word)
            if word in self.ARTICLES:
                continue
            words.append(self.CONTRACTIONS.get(word, word))
        return " ".join(words)

    def __call__(self, item: str) -> str:
        item = self.word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        item = self.process_punctuation(item)
        return self.process_digit_article(item)


def vqa_soft_score(pred: str, gt_answers: Sequence[str]) -> float:
    """VQA accuracy of one (already normalised) prediction against (already normalised) human answers.

    Each of the n human answers is left out once; on the remaining n-1 the score is
    min(#answers equal to pred / 3, 1); the result is the mean over the n subsets. With the usual
    10 answers: 0 matches -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, >= 4 -> 1.0.
    """
    n = len(gt_answers)
    if n == 0:
        raise ValueError("an entry has no ground-truth answers")
    matches = sum(1 for a in gt_answers if a == pred)
    total = 0.0
    for a in gt_answers:
        others = matches - (1 if a == pred else 0)
        total += min(1.0, others / 3.0)
    return total / n


class TextVQAAccuracyEvaluator:
    """VQA soft accuracy (used for TextVQA and, locally, VQAv2): predictions and human answers are both
    normalised with :class:`EvalAIAnswerProcessor`, then scored by :func:`vqa_soft_score`. Upstream asserts
    exactly 10 human answers; any non-empty list is accepted here (the formula is the same)."""

    def __init__(self):
        self.answer_processor = EvalAIAnswerProcessor()

    def _compute_answer_scores(self, raw_answers: Iterable[str]) -> Dict[str, float]:
        answers = [self.answer_processor(a) for a in raw_answers]
        return {u: vqa_soft_score(u, answers) for u in set(answers)}

    def eval_pred_list(self, pred_list: List[dict]) -> float:
        if not pred_list:
            raise ValueError("empty prediction list")
        scores = []
        for entry in pred_list:
            pred = self.answer_processor(entry["pred_answer"])
            scores.append(self._compute_answer_scores(entry["gt_answers"]).get(pred, 0.0))
        return sum(scores) / len(scores)


class STVQAAccuracyEvaluator:
    """ST-VQA accuracy: 1 if the normalised prediction equals any normalised ground truth, else 0."""

    def __init__(self):
        self.answer_processor = EvalAIAnswerProcessor()

    def eval_pred_list(self, pred_list: List[dict]) -> float:
        if not pred_list:
            raise ValueError("empty prediction list")
        hits = 0
        for entry in pred_list:
            pred = self.answer_processor(entry["pred_answer"])
            gts = {self.answer_processor(a) for a in entry["gt_answers"]}
            hits += pred in gts
        return hits / len(pred_list)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class STVQAANLSEvaluator:
    """Average Normalised Levenshtein Similarity (threshold 0.5), the ST-VQA/DocVQA metric.

    Per ground truth: s = 1 - edit_distance(p, g) / max(|p|, |g|) on lowercased, stripped strings, and s is
    set to 0 when below 0.5; the entry's score is the best s over its ground truths. No third-party
    edit-distance package is needed.
    """

    def get_anls(self, s1: str, s2: str) -> float:
        s1, s2 = s1.lower().strip(), s2.lower().strip()
        longest = max(len(s1), len(s2))
        if longest == 0:
            return 1.0
        similarity = 1.0 - levenshtein(s1, s2) / longest
        return similarity if similarity >= 0.5 else 0.0

    def eval_pred_list(self, pred_list: List[dict]) -> float:
        if not pred_list:
            raise ValueError("empty prediction list")
        scores = [max(self.get_anls(e["pred_answer"], g) for g in e["gt_answers"]) for e in pred_list]
        return sum(scores) / len(scores)


class TextCapsBleu4Evaluator:
    """BLEU-4 for TextCaps through pycocoevalcap (optional dependency, imported on first use)."""

    def __init__(self):
        try:
            from pycocoevalcap.bleu.bleu import Bleu
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TextCapsBleu4Evaluator needs pycocoevalcap (and a Java runtime for its PTB tokenizer): "
                "pip install pycocoevalcap") from exc
        self.tokenizer = PTBTokenizer()
        self.scorer = Bleu(4)

    def eval_pred_list(self, pred_list: List[dict]) -> float:
        gts, res = {}, {}
        for idx, entry in enumerate(pred_list):
            gts[idx] = [{"caption": a} for a in entry["gt_answers"]]
            res[idx] = [{"caption": entry["pred_answer"]}]
        gts = self.tokenizer.tokenize(gts)
        res = self.tokenizer.tokenize(res)
        score, _ = self.scorer.compute_score(gts, res)
        return score[3]  # BLEU-4
