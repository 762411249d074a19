"""The expert's loop: `solver view` (a run's trace as one HTML page), the doubt's ranking of
the errors, `solver learn` (corrections into the labelled file), and the whole loop in a
real browser (Debian's chromium through selenium) on a real run of the embedded model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from core.config import load_config, with_labelled
from core.data import load_questions, read_rows
from core.journal import traces_jsonl
from core.types import Prediction, Question
from solver.runner import doubt_ranking
from tests.helpers import ROOT, SAMPLE


def _cli(args):
    from solver.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line(r, *parts):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(p in lines[0] for p in parts), r.stderr
    assert "Traceback" not in r.output


def _trace(path, questions, letters):
    """A trace as --trace writes it (traces_jsonl), of these questions answered with these letters."""
    preds = {q.task_id: Prediction(task_id=q.task_id, letter=L, probabilities={k: float(k == L) for k in q.letters},
                                   trace=[{"step": "decide", "by": "rules", "letter": L}])
             for q, L in zip(questions, letters)}
    path.write_text(traces_jsonl(questions, preds, {"config": "t", "questions": len(questions)}))
    return path


def test_the_doubt_ranks_the_errors():
    # the 10% most doubtful of 20: the two least sure (one wrong); AUROC = P(a right one is surer than a wrong one)
    conf = [0.05, 0.1] + [0.2] * 3 + [0.9] * 15
    right = [False, True] + [False] * 3 + [True] * 15
    d = doubt_ranking(conf, right)
    assert (d["doubtful"], d["wrong_among_doubtful"], d["error_rate"]) == (2, 0.5, 0.2)
    # right ones: 0.1 (beats 1 of 4 wrong) and 15 at 0.9 (beat all 4): (1 + 60) / (16 * 4)
    assert d["auroc"] == pytest.approx(61 / 64)
    assert doubt_ranking([0.3, 0.4], [True, True])["auroc"] is None  # no wrong answer: nothing to rank


def test_view_refuses_what_is_not_a_trace(tmp_path):
    qs = load_questions(SAMPLE).questions[:2]
    bad = tmp_path / "t.jsonl"
    bad.write_text("task_id,answer\nx,A\n")
    _one_line(_cli(["view", bad, "--out", tmp_path / "r.html"]), f"{bad}: row 1: not valid JSON")
    lines = _trace(tmp_path / "ok.jsonl", qs, ["A", "B"]).read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], json.dumps({"task_id": "s9", "letter": "A"})]) + "\n")
    _one_line(_cli(["view", bad, "--out", tmp_path / "r.html"]), f"{bad}: row 3, field 'question': missing")
    rec = json.loads(lines[2]) | {"letter": "Q"}
    bad.write_text("\n".join([lines[0], json.dumps(rec)]) + "\n")
    _one_line(_cli(["view", bad, "--out", tmp_path / "r.html"]), f"{bad}: row 2, field 'letter': 'Q' is not one of")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_learn_merges_corrections_in_the_files_own_format(tmp_path, suffix):
    from core.data import rows_bytes

    qs = load_questions(SAMPLE, labelled=True).questions
    labelled = tmp_path / f"solved{suffix}"
    rows = [{"task_id": q.task_id, "question": q.question, "choices": q.choices, "answer": q.answer} for q in qs[:3]]
    labelled.write_bytes(rows_bytes(labelled, rows))
    new = qs[5]
    trace = _trace(tmp_path / "t.jsonl", [new], [new.letters[0]])
    other = next(L for L in qs[0].letters[:2] if L != qs[0].answer)
    fixes = tmp_path / "corrections.csv"
    fixes.write_text(f"task_id,answer,note\n{qs[0].task_id},{other},\"off by one, see docs\"\n"
                     f"{qs[1].task_id},{qs[1].answer},already so\n{new.task_id},{new.letters[1]},\n")
    r = _cli(["learn", "--corrections", fixes, "--labelled", labelled, "--trace", trace])
    assert r.exit_code == 0, r.output
    assert f"{qs[0].task_id}: {qs[0].answer} -> {other}  (off by one, see docs)" in r.stdout
    assert f"{new.task_id}: new, {new.letters[1]}" in r.stdout and "2 rows changed" in r.stdout
    got = {q.task_id: q for q in load_questions(labelled, labelled=True).questions}
    assert [got[q.task_id].answer for q in qs[:3]] == [other, qs[1].answer, qs[2].answer]
    assert (got[new.task_id].answer, got[new.task_id].choices, got[new.task_id].question) == (
        new.letters[1], new.choices, new.question)


def test_learn_refuses_bad_corrections_and_leaves_the_file(tmp_path):
    qs = load_questions(SAMPLE, labelled=True).questions
    labelled = tmp_path / "solved.jsonl"
    labelled.write_text("".join(json.dumps({"task_id": q.task_id, "question": q.question, "choices": q.choices,
                                            "answer": q.answer}) + "\n" for q in qs[:3]))
    before = labelled.read_bytes()
    trace = _trace(tmp_path / "t.jsonl", [qs[4]], ["A"])
    n = len(qs[0].choices)
    fixes = tmp_path / "c.csv"
    cases = [(f"task_id,answer,note\n{qs[0].task_id},B,\nnobody,A,\n", "row 3, field 'task_id': 'nobody' is neither"),
             (f"task_id,answer,note\n{qs[0].task_id},Z,\n", f"row 2, field 'answer': 'Z' is beyond the question's {n}"),
             (f"task_id,answer,note\n{qs[4].task_id},A,\n{qs[4].task_id},B,\n", "row 3, field 'task_id': duplicate"),
             (f"task_id,answer,note\n{qs[0].task_id},maybe,\n", "row 2, field 'answer': 'maybe' is not a letter")]
    for text, said in cases:
        fixes.write_text(text)
        _one_line(_cli(["learn", "--corrections", fixes, "--labelled", labelled, "--trace", trace]), str(fixes), said)
        assert labelled.read_bytes() == before


# ---- the whole loop, in a real browser -------------------------------------------------


def _browser(downloads):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("no chromium/chromedriver (make setup installs Debian's as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


@pytest.mark.slow
def test_a_correction_in_the_page_reaches_the_next_run(engine_solver, tmp_path):
    """A real run of configs/graph.yaml (the session's engine), its report opened in chromium:
    plots drawn, filters and search work, a row opens; a correction marked and exported is
    merged by `solver learn`, and the next run answers a copy of that question by it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from solver.api import Solver

    sample = load_questions(SAMPLE, labelled=True).questions
    labelled = tmp_path / "solved.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in read_rows(SAMPLE)[:20]))
    cfg = with_labelled(load_config(ROOT / "configs" / "graph.yaml"), labelled)[0]
    questions = sample[20:26]  # not among the solved ones
    preds = Solver(cfg, backbone=engine_solver.backbone).solve_batch(questions)
    trace, report = tmp_path / "trace.jsonl", tmp_path / "report.html"
    trace.write_text(traces_jsonl(questions, {p.task_id: p for p in preds}, {"config": cfg.name}))
    r = subprocess.run([sys.executable, "-m", "solver.cli", "view", str(trace), "--out", str(report)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr

    downloads = tmp_path / "downloads"
    d = _browser(downloads)
    try:
        d.get(report.as_uri())
        assert {f.get_attribute("id") for f in d.find_elements(By.CSS_SELECTOR, ".plots figure")} == {
            "plot-kinds", "plot-reliability", "plot-steps"}
        assert all(f.find_elements(By.TAG_NAME, "svg") for f in d.find_elements(By.CSS_SELECTOR, ".plots figure"))
        rows = lambda: d.find_elements(By.CSS_SELECTOR, "#rows tr.row")  # noqa: E731
        conf = [float(tr.find_elements(By.TAG_NAME, "td")[4].text) for tr in rows()]
        assert len(conf) == 6 and conf == sorted(conf)  # most doubtful first
        kind = Select(d.find_element(By.ID, "kind")).options[1].text
        Select(d.find_element(By.ID, "kind")).select_by_visible_text(kind)
        assert rows() and {tr.find_elements(By.TAG_NAME, "td")[1].text for tr in rows()} == {kind}
        Select(d.find_element(By.ID, "kind")).select_by_index(0)
        Select(d.find_element(By.ID, "right")).select_by_value("wrong")
        wrong = [p for p, q in zip(preds, questions) if p.letter != q.answer]
        assert len(rows()) == len(wrong)
        Select(d.find_element(By.ID, "right")).select_by_index(0)
        target = questions[3]
        d.find_element(By.ID, "search").send_keys(target.task_id)
        (row,) = rows()
        row.click()
        detail = d.find_element(By.CSS_SELECTOR, "tr.detail")
        assert target.choices[0].splitlines()[0].strip() in detail.text and "final:" in detail.text
        given = next(p.letter for p in preds if p.task_id == target.task_id)
        fixed = next(L for L in target.letters if L != given)
        Select(detail.find_element(By.CSS_SELECTOR, "select.fix")).select_by_value(fixed)
        detail.find_element(By.CSS_SELECTOR, "input.note").send_keys("checked by hand")
        detail.find_element(By.CSS_SELECTOR, "button.mark").click()
        assert d.find_element(By.ID, "ncorr").text == "1"
        d.find_element(By.ID, "export").click()
        exported = downloads / "corrections.csv"
        WebDriverWait(d, 60).until(lambda _: exported.is_file() and exported.read_text().count("\n") == 2)
        d.save_screenshot(str(tmp_path / "report.png"))
    finally:
        d.quit()
    assert exported.read_text() == f"task_id,answer,note\n{target.task_id},{fixed},checked by hand\n"

    r = subprocess.run([sys.executable, "-m", "solver.cli", "learn", "--corrections", str(exported),
                        "--labelled", str(labelled), "--trace", str(trace)], capture_output=True, text=True)
    assert r.returncode == 0 and f"{target.task_id}: new, {fixed}" in r.stdout, r.stderr
    # the next run: a copy of that question (a new id, its options reversed) is answered by the
    # correction, through the duplicate shortcut (a question never reads its own stored label)
    copy = target.model_copy(update={"task_id": "copy", "choices": target.choices[::-1]})
    (again,) = Solver(cfg, backbone=engine_solver.backbone).solve_batch([copy])
    decide = next(t for t in again.trace if t["step"] == "decide")
    want = copy.letters[copy.choices.index(target.choices[target.letters.index(fixed)])]
    assert (again.letter, decide["by"]) == (want, "duplicate")
    assert os.path.getsize(tmp_path / "report.png") > 10_000


RESULTS = sorted((ROOT / "eval" / "results" / "view").glob("*.trace.jsonl"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_a_full_runs_report_opens_with_its_plots_and_filters(path, tmp_path):
    """A committed 550-question run's report (eval/results/view/) in chromium: its three plots
    are drawn, every row is there most doubtful first, and each filter shows the rows the trace
    itself says (kind of question, wrong answers, deciding step)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from execution.recognise import kind_of

    lines = [json.loads(x) for x in path.read_text().splitlines()]
    recs = [r for r in lines if "task_id" in r]
    kinds = [kind_of(Question(task_id=r["task_id"], question=r["question"], choices=r["choices"])) for r in recs]
    by = [next((t["by"] for t in r["trace"] if t.get("step") == "decide"), None)
          or ("unread" if r["letter"] is None else "rules") for r in recs]
    wrong = sum(r["letter"] != r["answer"] for r in recs)
    report = tmp_path / "report.html"
    r = _cli(["view", path, "--out", report])
    assert r.exit_code == 0, r.output
    d = _browser(tmp_path)
    try:
        d.get(report.as_uri())
        figures = d.find_elements(By.CSS_SELECTOR, ".plots figure")
        assert [len(f.find_elements(By.TAG_NAME, "svg")) for f in figures] == [1, 1, 1]
        cells = "return [...document.querySelectorAll('#rows tr.row')].map(tr => tr.children[ARG].textContent)"
        conf = [float(x) for x in d.execute_script(cells.replace("ARG", "4"))]
        assert len(conf) == len(recs) >= 500 and conf == sorted(conf)
        shown = lambda: len(d.find_elements(By.CSS_SELECTOR, "#rows tr.row"))  # noqa: E731
        for kind in sorted(set(kinds)):
            Select(d.find_element(By.ID, "kind")).select_by_visible_text(kind)
            assert shown() == kinds.count(kind), kind
        Select(d.find_element(By.ID, "kind")).select_by_index(0)
        Select(d.find_element(By.ID, "right")).select_by_value("wrong")
        assert shown() == wrong and set(d.execute_script(cells.replace("ARG", "2"))) <= set("ABCDEFGHIJ")
        assert d.find_element(By.ID, "shown").text == f"{wrong} of {len(recs)} shown"
        Select(d.find_element(By.ID, "right")).select_by_index(0)
        for step in sorted(set(by)):
            Select(d.find_element(By.ID, "by")).select_by_visible_text(step)
            assert shown() == by.count(step), step
    finally:
        d.quit()
