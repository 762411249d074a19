"""What the sandbox's runs say about the options: the letters each check (kind of run) is
consistent with. A snippet's output matches options ("output" evidence); a snippet that
fails to compile or raises points at the options that name an error ("error"); the bodies
that pass a completion's examples ("examples"); a behaviour question's compile, or not
("compile": online-judge submissions (CodeNet: AtCoder, Aizu), whose judges compile Java
as Main.java: a main class of another name is a compile error there, 35 of 35 on train).
Pure functions of the question, its job and the runs' results.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.types import Question
from execution.recognise import COMPILE_OPTION, ERROR_OPTION, Job
from execution.sandbox import java_class

STOPPED = ("timeout", "killed")  # a run a limit ended: no evidence either way

@dataclass
class Evidence:
    """What a run says about the options: the letters it is consistent with, and why."""

    # output: the output matched; error: the run failed, options name an error; examples:
    # bodies passed; compile: the program compiled (or not), options name a compile error (or not)
    check: str  # output, error, examples or compile (config: execute.trust, execute.rule_out)
    status: str  # the sandbox's: ok, compile_error, runtime_error, timeout, killed, unavailable
    consistent: list[str] = field(default_factory=list)  # empty: the run settles nothing

    @property
    def settled(self) -> str | None:
        """The one option the run leaves, if it leaves exactly one."""
        return self.consistent[0] if len(self.consistent) == 1 else None

    def ruled_out(self, letters: list[str]) -> list[str]:
        """The options the run is inconsistent with (none, if it is consistent with none)."""
        return [k for k in letters if k not in self.consistent] if self.consistent else []


def tokens(text: str) -> list[str]:
    """What an output says, without the layout: words and symbols; whitespace, commas,
    semicolons and quotes dropped ('a=6 \\n b=15' and 'a = 6, b = 15' read the same)."""
    return re.findall(r"\w+|[^\w\s,;'\"`]", text.replace("\\n", " ").replace("\\t", " "))


def passes(result) -> bool:
    """A body's run against the examples: it ran, attempted some, and none failed."""
    m = re.search(r"^EXAMPLES (\d+) (\d+)$", result.stdout, re.M)
    return result.status == "ok" and bool(m) and m[1] == "0" and m[2] != "0"


def evidence(q: Question, job: Job, results: list) -> Evidence:
    """The options the runs are consistent with: examples, the bodies that pass them all;
    output, the options whose text reads as the output, or, for a run that failed, the
    options that name an error; compile, the options that name a compile error if it
    failed to compile, else the others. A run or compile that a limit stopped (`timeout`,
    `killed`) says nothing: how long a program takes, and how much memory the kernel finds
    for it, depend on the machine and its load, so they must not decide."""
    if job.check == "examples":  # a body stopped by a limit is not ruled out: it says nothing
        statuses = {r.status for r in results}
        status = "ok" if statuses & {"ok", "runtime_error"} else min(statuses)  # unavailable, timeout...
        if status != "ok" or not any(passes(r) for r in results):
            return Evidence("examples", status)
        return Evidence("examples", status, [k for k, r in zip(q.letters, results) if passes(r) or r.status in STOPPED])
    status, stdout = results[0].status, results[0].stdout
    if job.check == "compile":  # Python that does not parse may be Python 2: no evidence
        if status not in ("ok", "compile_error") or (status == "compile_error" and job.language == "python"):
            return Evidence("compile", status)
        if job.language == "java" and java_class(job.sources[0]) != "Main":
            status = "compile_error"  # their judges compile Main.java (module docstring)
        return Evidence("compile", status, [k for k, c in zip(q.letters, q.choices)
                                            if bool(COMPILE_OPTION.search(c)) == (status == "compile_error")])
    if status == "ok":
        said = tokens(stdout)
        return Evidence("output", status, [k for k, c in zip(q.letters, q.choices) if said and tokens(c) == said])
    if status in ("compile_error", "runtime_error"):
        return Evidence("error", status, [k for k, c in zip(q.letters, q.choices) if ERROR_OPTION.search(c)])
    return Evidence(job.check, status)
