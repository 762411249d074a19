"""The ranker's LLM-free features: pure functions of hand-made questions (no data file)."""

import numpy as np
import pytest

from core.types import Question
from execution.recognise import kind_of
from graphs.features import FEATURES, Evidence, matrix
from graphs.priors import OptionPriors


def q(text, choices, answer=None, task_id="t0"):
    return Question(task_id=task_id, question="Question: " + text, choices=choices, answer=answer)


BLANK = ("Look at the problem below, the solution is missing a part, which option is the most likely to "
         "complete the solution?\n\nIncomplete Solution:\ndef f(x):\n    y = x\n    _______________\n    return y\n")


@pytest.mark.parametrize("text, kind", [
    (BLANK, "completion"),
    ("Given a code snippet below, which behavior most likely to occur when execute it?\nint main(){}", "behaviour"),
    ("What will be the output of the following Python code?\nprint(1 + 1)", "output"),
    (("The implementation below is producing incorrect results.\nWhich solution below correctly identifies the "
      "bug and repairs it?\n1 def f(x):\n2     return x - 1"), "repair"),
    ("Which sorting algorithm is stable?", "knowledge"),
    ("In SQL, __________ is an Aggregate function.", "knowledge"),
])
def test_kind_of(text, kind):
    assert kind_of(q(text, ["a", "b"])) == kind


def test_text_features_read_the_blank():
    question = q(BLANK, ["    y += 1", "    return y", "  y = y * 2\n"])
    ev = Evidence(question, kind_of(question))
    assert FEATURES["repeats_after_blank"].fn(ev) == [0.0, 1.0, 0.0]
    assert FEATURES["indent_match"].fn(ev) == [1.0, 1.0, 0.0]
    assert FEATURES["style_odd"].fn(ev) == [0.5, 0.5, 1.0]
    assert FEATURES["ends_newline"].fn(ev) == [0.0, 0.0, 1.0]


def test_shape_and_matrix():
    question = q("Which?", ["alpha", "b", "None of the above", "b"])
    ev = Evidence(question, "knowledge")
    assert FEATURES["offered_twice"].fn(ev) == [0.0, 1.0, 0.0, 1.0]
    assert FEATURES["above_option"].fn(ev) == [0.0, 0.0, 1.0, 0.0]
    assert FEATURES["position_from_end"].fn(ev) == [3.0, 2.0, 1.0, 0.0]
    m = matrix(ev, ["position", "kind_knowledge", "prior_rate"])
    assert m.dtype == np.float32 and m.shape == (4, 3)
    assert m[:, 0].tolist() == [0, 1, 2, 3] and m[:, 1].tolist() == [1] * 4 and m[:, 2].tolist() == [0] * 4


def test_retrieval_support():
    question = q("Which is true?", ["True", "False"])
    same = q("Which is true?", ["False", "True"], answer="B", task_id="n1")
    other = q("Which is false?", ["True", "False"], answer="B", task_id="n2")
    ev = Evidence(question, "knowledge", neighbours=[(same, 0.9), (other, 0.5)])
    assert FEATURES["nb_right"].fn(ev) == [0.9, 0.5]
    assert FEATURES["nb_wrong"].fn(ev) == [0.5, 0.9]
    assert FEATURES["nb_right_same_text"].fn(ev) == [0.9, 0.0]
    assert FEATURES["nb_same_text"].fn(ev) == [1.0, 1.0]


LABELLED = [
    q("one", ["True", "False"], "A", "a"),
    q("two", ["True", "False", "Error"], "A", "b"),
    q("What is the output?\nprint(3)", ["True", "3"], "B", "c"),
    q("What is the output?\nprint(True)", ["True", "3"], "A", "d"),
]


@pytest.mark.parametrize("kinds", [None, kind_of])
def test_priors_leave_one_out(kinds):
    full = OptionPriors.build(LABELLED, a=2.0, kind_of=kinds)
    for i, own in enumerate(LABELLED):
        rest = OptionPriors.build(LABELLED[:i] + LABELLED[i + 1:], a=2.0, kind_of=kinds)
        for text in ["True", "False", "3", "Error", "unseen"]:
            for kind in [None, kind_of(own)] if kinds else [None]:
                assert full.rate(text, exclude=own, kind=kind) == pytest.approx(rest.rate(text, kind=kind))
    # a question outside the labelled set, or unlabelled, changes nothing
    new = q("new", ["True", "False"], None, "z")
    assert full.rate("True", exclude=new) == full.rate("True")
    assert full.rate("True") == pytest.approx((3 + 2 * 4 / 9) / (4 + 2))


def test_prior_features_exclude_the_question_itself():
    full = OptionPriors.build(LABELLED)
    own = LABELLED[0]
    rest = OptionPriors.build(LABELLED[1:])
    assert FEATURES["prior_rate"].fn(Evidence(own, "knowledge", priors=full)) == pytest.approx(
        [rest.rate(c) for c in own.choices])


def test_out_of_fold_priors_never_read_their_own_fold():
    from graphs.priors import fold_of, out_of_fold

    priors_of = out_of_fold(LABELLED, folds=2, seed=0)
    for own in LABELLED:
        others = [x for x in LABELLED if fold_of(x.task_id, 2, 0) != fold_of(own.task_id, 2, 0)]
        assert own.task_id not in priors_of(own).ids and priors_of(own).ids == {x.task_id for x in others}
    assert priors_of(q("new", ["True"], None, "z")).ids == {x.task_id for x in LABELLED}
