"""What a user sees of the CLI: a few lines of ours, whole at any width (a real run's lines
and its log: tests/test_models.py, from a plain clone); a run that fails before answering
leaves nothing behind; a Ctrl-C at any moment ends with one line."""

import json
import re
import subprocess
import sys

import pytest
from rich.progress import Progress
from typer.testing import CliRunner

from backends.registry import MODELS, location
from solver import console
from solver.cli import app
from tests.helpers import ROOT

GOOD = "task_id,question,choices\nq1,Question: ok?,\"['a', 'b']\"\n"


def _leaves_nothing(tmp_path, config: dict, extra=(), env=None) -> list[str]:
    """`solver run` into a folder that does not exist yet: its error lines; nothing written."""
    data = tmp_path / "q.csv"
    data.write_text(GOOD)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(config))
    out = tmp_path / "new" / "sub.csv"
    r = CliRunner().invoke(app, ["run", "-i", str(data), "-o", str(out), "-c", str(cfg), *extra], env=env)
    assert r.exit_code in (1, 2) and "Traceback" not in r.output, r.output
    assert not (tmp_path / "new").exists()  # neither the CSV nor its journal, nor their folder
    return r.stderr.strip().splitlines()


def test_a_missing_labelled_file_is_named_by_its_flag_and_leaves_nothing(tmp_path):
    said = _leaves_nothing(tmp_path, {"graph": {"enabled": True}, "retrieve": {"enabled": True}},
                           ["--labelled", str(tmp_path / "mine.csv")])
    assert said == [f"error: --labelled {tmp_path / 'mine.csv'}: no such file"]


def test_a_server_that_is_not_up_is_found_before_anything_starts(tmp_path):
    said = _leaves_nothing(tmp_path, {"backbone": {"backend": "server", "served_name": "ghost",
                                                   "base_url": "http://127.0.0.1:9/v1"}})
    assert len(said) == 1 and said[0].startswith("error: backbone 'ghost': no server answers at http://127.0.0.1:9/v1")


def test_every_model_is_checked_before_any_engine_starts(tmp_path, monkeypatch):
    """configs/vote.yaml's shape: the second model is not here, so the first (here) never starts:
    an empty cache stays without the first model's dequantized copy."""
    empty = tmp_path / "empty-cache"
    monkeypatch.setenv("CODEMCQ_CACHE", str(empty))
    two = [{"model": "smollm2-135m-instruct"}, {"model": "qwen2.5-coder-0.5b"}]
    said = _leaves_nothing(tmp_path, {"graph": {"enabled": True}, "backbones": two})
    assert said == ["error: model 'qwen2.5-coder-0.5b' is not here: solver models pull qwen2.5-coder-0.5b"]
    assert not (empty / "models").exists()


def test_models_list_prints_whole_names_and_paths_at_any_width():
    r = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    rows = r.stdout.splitlines()[1:]
    assert len(rows) == len(MODELS) and "…" not in r.stdout
    for row, e in zip(rows, MODELS.values()):
        assert row.split()[0] == e.name and (str(location(e)) if location(e) else f"solver models pull {e.name}") in row


def test_our_lines_are_never_hard_wrapped_in_a_file_or_pipe(capsys):
    line = "wrote " + "/a-long-folder" * 20 + "/submission.csv (30 answers)"
    console.out.print(line, highlight=False)
    console.err.print(line, highlight=False)
    got = capsys.readouterr()
    assert got.out == line + "\n" and got.err == line + "\n"


def test_the_bar_and_the_summary_say_the_same_rate():
    """A resumed run: 20 answers journaled before, 10 answered in 8 s. The bar counts the 10,
    as the summary (`rate`) does, not the 30."""
    clock = [100.0]
    bar = Progress(console.RateColumn("q"), get_time=lambda: clock[0], disable=True)
    task = bar.add_task("answering", total=30, completed=20, base=20)
    clock[0] += 8.0
    bar.update(task, advance=10)
    shown = console.RateColumn("q").render(bar.tasks[0]).plain
    assert shown == "1.25 q/s" == f"{console.rate(10, 8.0):.2f} q/s"


def test_a_ctrl_c_as_the_command_ends_is_one_line(tmp_path):
    """Delivered from the interpreter's exit handlers, where the libraries tear down (torch's
    finalizers printed "Exception ignored ... KeyboardInterrupt" there)."""
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "faulty.py"), "exit:SIGINT", "models", "list"], cwd=ROOT,
                       capture_output=True, text=True, preexec_fn=lambda: __import__("signal").signal(2, 0))
    assert r.returncode == 130 and r.stderr.splitlines() == ["error: interrupted"], r.stderr


def test_the_quick_start_says_how_to_reach_solver():
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "source .venv/bin/activate" in quick and ".venv/bin/solver" in quick
    solver = ROOT / ".venv" / "bin" / "solver"  # where `make` puts it (make test ran the setup)
    if not solver.exists():
        pytest.skip("no .venv here: not set up by make")
    r = subprocess.run([str(solver), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and re.search(r"\brun\b", r.stdout)
