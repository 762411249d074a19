"""Data loading: pure functions on fixed inputs, the shipped sample, and the shared data."""

import csv
import json

import pytest

from core.data import DataError, clean_label, group_of, in_split, load_questions, parse_choices, split_of
from tests.helpers import SAMPLE


@pytest.mark.parametrize("raw,want", [("A", "A"), ("ANSWER: B", "B"), ("ANSWER:  d", "D"), (" c ", "C"),
                                      ("", None), (None, None), ("AB", None), ("ANSWER:", None), ("1", None)])
def test_clean_label(raw, want):
    assert clean_label(raw) == want


def test_parse_choices_literal_with_quotes_and_code():
    assert parse_choices("""['print("a")', "it's", 'a\\\\b']""") == ['print("a")', "it's", "a\\b"]
    assert parse_choices(["x", "y"]) == ["x", "y"]


@pytest.mark.parametrize("raw", ["[1, 2]", "['a', 3]", "'a'", "{'a': 1}", "__import__('os')", "['a'"])
def test_parse_choices_refuses(raw):
    with pytest.raises(ValueError):
        parse_choices(raw)


def test_group_and_split_are_fixed():
    assert group_of("k01234") == "k" and group_of("rt00012") == "rt" and group_of("123") == "other"
    # pinned: every result in eval/results/ was split this way; a change would mix them
    assert [split_of(t) for t in ("k10100", "k10119", "k10101", "rt00001")] == ["train", "dev", "test", "test"]
    shares = [split_of(f"id{i}") for i in range(3000)]
    assert 0.12 < shares.count("dev") / 3000 < 0.18 and 0.12 < shares.count("test") / 3000 < 0.18


def test_sample_ships_30_varied_questions():
    qs = load_questions(SAMPLE, labelled=True).questions
    assert len(qs) == 30 and all(q.answer in q.letters for q in qs)
    assert {len(q.choices) for q in qs} >= {2, 3, 4, 5, 6}
    assert {q.group for q in qs} == {"output_prediction", "bug_finding", "concepts"}


def test_formats_agree(tmp_path):
    """The same questions read from CSV, JSONL and parquet give the same Questions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:5]]
    csv_path = tmp_path / "q.csv"
    import csv

    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task_id", "question", "choices", "answer", "subset"])
        for r in rows:
            w.writerow([r["task_id"], r["question"], repr(r["choices"]), f"ANSWER: {r['answer']}", r["subset"]])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = {s: load_questions(tmp_path / f"q.{s}", labelled=True) for s in ("csv", "jsonl", "parquet")}
    assert loaded["csv"].questions == loaded["jsonl"].questions == loaded["parquet"].questions
    assert loaded["csv"].relabelled == 5 and loaded["jsonl"].relabelled == 0


def test_labelled_quirks_are_skipped_and_counted(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text(
        "task_id,question,choices,answer\n"
        "a1,Question: ok?,\"['x', 'y']\",ANSWER:  B\n"
        "a2,Question: no label,\"['x', 'y']\",\n"
        "a3,Question: beyond,\"['x', 'y']\",E\n"
        "a4,Question: empty options,,\n"
        "a5,Question: one option,\"['x']\",A\n"
    )
    loaded = load_questions(p, labelled=True)
    assert [q.task_id for q in loaded.questions] == ["a1"] and loaded.questions[0].answer == "B"
    assert loaded.skipped == {"no label": 2, "label beyond the options": 1, "fewer than 2 options": 1}
    with pytest.raises(DataError, match="row 4, field 'choices': 0 option"):
        load_questions(p)  # the same file as questions to answer: refused, not skipped


def test_shared_train_and_test(shared):
    train = load_questions(shared / "train.csv", labelled=True)
    assert len(train.questions) + sum(train.skipped.values()) == 3463
    assert train.relabelled >= 200 and train.skipped["no label"] >= 14
    assert all(q.answer in q.letters for q in train.questions)
    test = load_questions(shared / "test.csv").questions
    assert len(test) == 1253 and all(2 <= len(q.choices) <= 26 for q in test)


def test_a_huge_field_is_read_and_cut_to_fit(tmp_path, tokenizer):
    """A 14 MB question is valid CSV: it is read whole, and its prompt is cut to the context."""
    from core.prompts import answer_prompt

    code = "int x = 0;\n" * 1_300_000  # 14.3 MB
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["task_id", "question", "choices"],
                                 ["big", f"Question: {code}What is x?", "['0', '1']"]])
    (q,) = load_questions(path).questions
    assert len(q.question) > 14_000_000 and q.question.endswith("What is x?")
    p = answer_prompt(q, tokenizer, 2048)
    assert p.cut and p.tokens <= 2048 and "What is x?" in p.text and "int x = 0;" in p.text


def test_in_split_keeps_one_split_in_order():
    qs = load_questions(SAMPLE).questions
    parts = {s: in_split(qs, s) for s in ("train", "dev", "test")}
    assert sorted(q.task_id for p in parts.values() for q in p) == sorted(q.task_id for q in qs)
    assert all(split_of(q.task_id) == s for s, p in parts.items() for q in p)
    assert in_split(qs, None) == qs == in_split(qs, "all")
    assert [q.task_id for q in parts["train"]] == [q.task_id for q in qs if q in parts["train"]]  # input order
