"""execution/ (recognise.py, evidence.py): which questions can run, their code and language, and what a real
sandboxed run says about the options (fixtures of our own)."""

import pytest

from core.config import ExecuteConfig
from core.types import Question
from execution import sandbox
from execution.evidence import evidence, tokens
from execution.recognise import call_examples, job_for

C = Question(task_id="c", question="Question: What will be the output of the following C code?\n#include <stdio.h>\n"
             "int main() {\n    int a = 1, b = 3;\n    b = a++ + a++;\n"
             "    printf(\"a=%d \\n b=%d\", a, b);\n    return 0;\n}",
             choices=["a = 1, b = 3", "a = 3, b = 3", "a = 3, b = 4", "a = 2, b = 2"])
CPP_FLAT = Question(task_id="cpp", question="Question: What is the output of this program?\n    #include <iostream>    "
                    "using namespace std;    int main() {        cout << 7 / 2 << \" \" << 7 % 2;    }",
                    choices=["3.5 1", "3 1", "4 1", "3 0"])
REPL = Question(task_id="py", question="Question: What will be the output of the following Python code?\n"
                ">>> a = {1, 2, 3}\n>>> b = a\n>>> b.remove(3)\n>>> a",
                choices=["{1,2,3}", "Error, sets cannot be copied", "{1,2}", "None"])
JAVA = Question(task_id="java", question="Question: What is the output of this program?\nclass Sum {\n"
                "    public static void main(String[] args) {\n        int s = 0;\n"
                "        for (int i = 1; i <= 4; i++) s += i;\n        System.out.print(s);\n    }\n}",
                choices=["4", "10", "24", "Compilation error"])
JS = Question(task_id="js", question="Question: What does this code print?\n```js\nconst xs = [3, 1, 2];\n"
              "console.log(xs.sort().join('-'));\n```", choices=["3-1-2", "1-2-3", "1,2,3", "undefined"])
BROKEN = Question(task_id="bad", question="Question: What is the output of the following C code?\n#include <stdio.h>\n"
                  "int main() { printf(\"%d\", x); }", choices=["0", "Garbage value", "Compile time error", "1"])
DOCTESTED = Question(task_id="doc", question="Question: Which solution below is the most likely completion "
                     "the following\ncode snippet to achieve the desired goal?\n\n\ndef evens(xs: list) -> list:\n"
                     "    \"\"\" The even numbers of xs.\n"
                     "    >>> evens([1, 2, 3, 4])\n    [2, 4]\n    >>> evens([])\n    []\n    \"\"\"\n",
                     choices=["  return [x for x in xs if x % 2]", "    return [x for x in xs if x % 2 == 0]\n",
                              "  return xs[::2]"])
CALLED = Question(task_id="calls", question="Question: Which solution below is the most likely completion "
                  "the following\ncode snippet to achieve the desired goal?\n\ndef largest_even(x, y):\n"
                  "    \"\"\"The biggest even number in [x, y], or -1.\n"
                  "    For example:\n    largest_even(12, 15) = 14\n    largest_even(13, 12) => -1\n"
                  "    largest_even(a, b) == -1\n"
                  "    \"\"\"\n", choices=["    return y if y % 2 == 0 else y - 1",
                                          "    if x > y:\n        return -1\n    return y if y % 2 == 0 else y - 1",
                                          "    return max(x, y)"])
IO = Question(task_id="io", question="Question: Which solution below is the most likely completion the following\n"
              "code snippet to achieve the desired goal?\n\ndef count_up(n, step):\n    \"\"\"\n    Example 1:\n\n"
              "        Input: n = 7, step = 3\n        Output: [0, 3, 6]\n    \"\"\"\n",
              choices=["    return list(range(0, n, step))", "    return list(range(n))[::step][1:]",
                       "    return [n, step]"])
JUDGED = ("Question: Given a code snippet below, which behavior most likely to occur when execute it?\n"
          "import java.util.*;\npublic class {name} {{\n  public static void main(String[] a) {{\n"
          "    Scanner sc = new Scanner(System.in);\n    int n = sc.nextInt();\n"
          "    System.out.println({expr});\n  }}\n}}\n")
BEHAVIOURS = ["Runtime Error", "Compile Error", "No abnormally found", "Time Limit Exceeded"]
COMPILES = Question(task_id="compiles", question=JUDGED.format(name="Main", expr="n * 2"), choices=BEHAVIOURS)
NOT_JAVA = Question(task_id="noncompiling", question=JUDGED.format(name="Main", expr="n * \"2\" - 1"),
                    choices=BEHAVIOURS)
NOT_MAIN = Question(task_id="notmain", question=JUDGED.format(name="Solver", expr="n * 2"), choices=BEHAVIOURS)
PY_BEHAVIOUR = Question(task_id="pybehaviour", question="Question: Given a code snippet below, which behavior "
                        "most likely to occur when execute it?\nn = int(input())\nprint(sum(range(n)))\n",
                        choices=BEHAVIOURS)
CONCEPT = Question(task_id="k", question="Question: Which sorting algorithm is stable?",
                   choices=["Quick sort", "Merge sort"])


def test_which_questions_run_and_in_which_language():
    assert [job_for(q).language for q in (C, CPP_FLAT, REPL, JAVA, JS)] == ["c", "cpp", "python", "java", "javascript"]
    assert job_for(CONCEPT) is None
    assert "\n#include <iostream>\n" in job_for(CPP_FLAT).sources[0]  # flattened snippets get their lines back
    assert "print(repr(" in job_for(REPL).sources[0]  # a >>> session prints what it shows
    assert job_for(DOCTESTED).check == "examples" and len(job_for(DOCTESTED).sources) == 3
    assert [job_for(q).check
            for q in (CALLED, IO, COMPILES, PY_BEHAVIOUR)] == ["examples", "examples", "compile", "compile"]


def test_examples_read_from_the_docstring():
    code = ('def f(a, b):\n    """\n    f(1, 2) == 3\n    f([1], (2, 3)) ➞ [1, 2].\n'
            '    f(x) should return 0\n    g(1) = 2\n    """')
    assert call_examples(code, "f") == [("1, 2", "3"), ("[1], (2, 3)", "[1, 2]"), ("x", "0")]
    assert call_examples("    Input: s = 'ab'\n\n    Output: 2\n", "f") == [("s = 'ab'", "2")]


def test_outputs_read_without_their_layout():
    assert tokens("a=3 \n b=3") == tokens("a = 3, b = 3") == tokens("'a=3' b=3")
    assert tokens("{1, 2}") == tokens("{1,2}") != tokens("[1,2]")


@pytest.mark.parametrize("q, want", [(C, "B"), (CPP_FLAT, "B"), (REPL, "C"), (JAVA, "B"), (JS, "B"), (BROKEN, "C"),
                                     (DOCTESTED, "B"), (CALLED, "B"), (IO, "A"), (NOT_JAVA, "B"), (NOT_MAIN, "B")],
                         ids=lambda x: x.task_id if isinstance(x, Question) else x)
def test_a_sandboxed_run_settles_the_option(q, want, tmp_path):
    if sandbox.available() is None:
        pytest.skip("no sandbox (bwrap) here")
    job = job_for(q)
    if not sandbox.runtimes()[job.language]:
        pytest.skip(f"no {job.language} toolchain here")
    rs = [sandbox.run(job.language, s, timeout_s=10, check_only=job.check == "compile", cache_dir=tmp_path)
          for s in job.sources]
    e = evidence(q, job, rs)
    assert e.settled == want, [(r.status, r.stdout, r.stderr[-500:]) for r in rs]


@pytest.mark.parametrize("q", [COMPILES, PY_BEHAVIOUR], ids=lambda q: q.task_id)
def test_a_clean_compile_rules_out_compile_error(q, tmp_path):
    """A behaviour question's program that compiles (Python: parses) is not a compile error;
    it is never run (it waits for an input), so the rest stays open."""
    if sandbox.available() is None:
        pytest.skip("no sandbox (bwrap) here")
    job = job_for(q)
    if not sandbox.runtimes()[job.language]:
        pytest.skip(f"no {job.language} toolchain here")
    rs = [sandbox.run(job.language, s, check_only=True, cache_dir=tmp_path) for s in job.sources]
    e = evidence(q, job, rs)
    assert (rs[0].status, rs[0].stdout) == ("ok", "") and e.settled is None
    assert e.ruled_out(q.letters) == ["B"] and e.consistent == ["A", "C", "D"]


def test_hostile_code_in_a_compile_check_or_an_option_body_escapes_nothing(tmp_path, monkeypatch):
    """The two newer ways a question's code runs: a compile check that tries to read a host
    file into the program (#include), and option bodies run against examples that write
    outside and read the environment. Inside the sandbox neither sees the host."""
    if sandbox.available() is None:
        pytest.skip("no sandbox (bwrap) here")
    secret, marker = tmp_path / "secret.h", tmp_path / "escaped.txt"
    secret.write_text("int leaked = 424242;\n")
    monkeypatch.setenv("CODEMCQ_SECRET", "s3cr3t-token")
    reads = Question(task_id="reads", question="Question: Given a code snippet below, which behavior most likely "
                     f"to occur when execute it?\n#include <stdio.h>\n#include \"{secret}\"\n"
                     f"int main() {{ printf(\"%d\", leaked); }}\n",
                     choices=BEHAVIOURS)
    writes = CALLED.model_copy(update={"choices": [
        f"    open({str(marker)!r}, 'w').write('x')\n    return 14",
        "    import os\n    return os.environ.get('CODEMCQ_SECRET', 14)",
        "    return max(x, y)"]})
    for q in (reads, writes):
        job = job_for(q)
        if not sandbox.runtimes()[job.language]:
            continue
        rs = [sandbox.run(job.language, s, check_only=job.check == "compile", cache_dir=tmp_path / "cache")
              for s in job.sources]
        said = "".join(r.stdout + r.stderr for r in rs)
        assert "424242" not in said and "s3cr3t-token" not in said and not marker.exists()
        if q is reads:
            assert job.check == "compile" and rs[0].status == "compile_error"  # the host file is not there
        else:
            assert evidence(q, job, rs).consistent == []  # the write failed and no secret came back: nothing passes


def test_graph_settles_runnable_questions_without_the_llm(engine_solver, tmp_path, monkeypatch):
    """The execute step in the compiled graph: a settled question costs no LLM call; the
    others are answered as before; a hostile snippet, run through the graph, escapes nothing."""
    from core.config import SolverConfig
    from solver.api import Solver
    from tests.helpers import SMALL

    if sandbox.available() is None:
        pytest.skip("no sandbox (bwrap) here")
    monkeypatch.setenv("CODEMCQ_SECRET", "s3cr3t-token")
    marker = tmp_path / "escaped.txt"
    hostile = Question(task_id="evil", question="Question: What is the output of the following Python code?\n"
                       f"import os\nopen({str(marker)!r}, 'w').write('x')\nprint(os.environ.get('CODEMCQ_SECRET'))",
                       choices=["s3cr3t-token", "None", "x"])
    # and one whose children fill memory together, their fork reached so that the step runs it
    hog = Question(task_id="hog", question="Question: What is the output of the following Python code?\n"
                   "import os, signal\nfor i in range(12):\n    if getattr(os, 'fork')() == 0:\n"
                   "        b = bytearray(b'\\x01' * (100 << 20))\n        signal.pause()\nfor i in range(12):\n"
                   "    os.wait()\nprint('all done')\n",
                   choices=["all done", "MemoryError", "Killed"])
    cfg = SolverConfig.model_validate({"backbone": SMALL, "graph": {"enabled": True},
                                       "execute": {"enabled": True, "memory_mb": 256}})
    solver = Solver(cfg, backbone=engine_solver.backbone)
    preds = solver.solve_batch([C, REPL, CONCEPT, hostile, hog])
    steps = {p.task_id: [t["step"] for t in p.trace] for p in preds}
    cost = {p.task_id: p.trace[-1] for p in preds}
    assert [p.letter for p in preds[:2]] == ["B", "C"] and steps["c"] == ["execute", "decide", "cost"]
    assert cost["c"]["calls"] == 0 and cost["c"]["runs"] == 1
    assert steps["k"][:2] == ["execute", "vote"] and cost["k"]["calls"] == 1 and cost["k"]["runs"] == 0
    assert preds[2].letter in CONCEPT.letters
    evil = next(t for t in preds[3].trace if t["step"] == "execute")
    assert evil["status"] == "runtime_error" and not marker.exists()  # the write failed: nothing outside
    assert preds[3].letter != "A"  # the secret never reached the run, so it settled nothing towards it
    if sandbox.grouped():  # the run was killed at its cap, the question answered without it
        run = next(t for t in preds[4].trace if t["step"] == "execute")
        assert run["status"] == "killed" and "memory cap of 256 MB" in run["why"] and run["peak_mb"] <= 257, run
        assert not run["trusted"] and preds[4].letter in hog.letters


def test_a_timeout_is_never_evidence():
    """How long a program takes depends on the machine and its load: a run, a body or a
    compile that timed out rules nothing out and settles nothing."""
    ok = sandbox.Result(status="ok", stdout="EXAMPLES 0 2\n")
    fails, slow = sandbox.Result(status="ok", stdout="EXAMPLES 1 2\n"), sandbox.Result(status="timeout")
    assert evidence(CALLED, job_for(CALLED), [fails, ok, slow]).consistent == ["B", "C"]  # C may yet pass
    assert evidence(CALLED, job_for(CALLED), [fails, slow, slow]).consistent == []  # nothing passed: no evidence
    assert evidence(CALLED, job_for(CALLED), [fails, ok, fails]).settled == "B"
    for q in (C, BROKEN, COMPILES, NOT_MAIN):
        assert evidence(q, job_for(q), [slow]).consistent == []


def test_a_compiler_out_of_time_is_no_compile_error(tmp_path):
    if sandbox.available() is None or not sandbox.runtimes()["c"]:
        pytest.skip("no sandbox (bwrap) or no gcc here")
    src = job_for(C).sources[0]
    budget = {"compile_timeout_s": 0.001}  # no compiler starts in a millisecond
    r = sandbox.run("c", src, check_only=True, cache_dir=tmp_path, **budget)
    assert r.status == "timeout" and evidence(COMPILES, job_for(COMPILES), [r]).consistent == []
    assert sandbox.run("c", src, check_only=True, cache_dir=tmp_path, **budget).cached  # the first outcome stands
    assert not sandbox.run("c", src, check_only=True, cache_dir=tmp_path).cached  # another budget, another run
    default = ExecuteConfig()  # the config's budget is the sandbox's
    assert (default.compile_timeout_s, default.compile_memory_mb) == (sandbox.COMPILE_S, sandbox.COMPILE_MB)
