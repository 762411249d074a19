"""Which questions have code this sandbox can run, and what to run for them.

Three kinds of question run:
- output prediction ("What is the output of the following code?", the options are
  outputs): the snippet runs once.
- completion with examples (a Python function whose docstring holds examples: `>>>`
  sessions, `f(x) == y` / `f(x) => y` lines, or Input:/Output: pairs; the options are
  bodies): each option's body runs against the examples.
- behaviour ("which behavior most likely occurs when executing it?", the options are
  Compile Error, Runtime Error, ...): the program is compiled (Python and JavaScript:
  parsed), not run, since it waits for an input we do not have.
Pure functions of the question's text (execution/evidence.py reads the runs).
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from core.prompts import question_text
from core.types import Question

ASKS_OUTPUT = re.compile(r"\b(output|print(?:s|ed)?|displayed?|result)\b[^\n?]*\?|\boutput\b", re.I)
# Output that depends on the machine the question imagines (a 32-bit CPU, Turbo C, files,
# processes, time): this sandbox's run is no evidence for it.
ENV_DEPENDENT = re.compile(r"\b(16|32|64)[- ]?bit\b|turbo|\bfopen\s*\(|\bopen\s*\(\s*\"|\bfork\s*\(|\bsleep\s*\(|"
                           r"/dev/|pthread|\btime\s*\(|\brand\s*\(|random\.|Math\.random|\bthread", re.I)
BEHAVIOUR = re.compile(r"\bbehaviou?r\b[^\n]*\boccur", re.I)
COMPILE_OPTION = re.compile(r"\bcompil\w*[\s-]*(time\s*)?error|\bdoes not compile|\bsyntax error", re.I)
ERROR_OPTION = re.compile(r"\b(error|exception|compil\w*|does not compile|undefined behaviou?r|segmentation)\b", re.I)
# (language, pattern): the first that matches the code names its language
LANGUAGES = [
    ("java", re.compile(r"\bpublic\s+static\s+void\s+main\b|\bSystem\.out\.print")),
    ("cpp", re.compile(r"#\s*include\s*<(iostream|bits/stdc\+\+\.h|string|vector|map)>"
                       r"|\bstd::|\bcout\s*<<|using\s+namespace\s+std")),
    ("c", re.compile(r"#\s*include\s*<\w+\.h>|\bprintf\s*\(|\bint\s+main\s*\(")),
    ("javascript", re.compile(r"\bconsole\.log\s*\(|\b(let|const|var)\s+\w+\s*=|=>")),
    ("python", re.compile(r"^\s*(>>>|print\s*\(|def |import |for .* in .*:|class \w+.*:)", re.M)),
]


DOCTEST = "\n\nimport doctest as _d\n_r = _d.testmod()\nprint('EXAMPLES', _r.failed, _r.attempted)\n"
# Examples as (call arguments, expected value) source pairs: an example whose own text does
# not evaluate (`is_happy(abc) => False`) is skipped, not failed; a body that raises fails.
CALLS = """

import math as _m
def _same(r, e):
    return r == e or (isinstance(r, float) and isinstance(e, (int, float))
                      and _m.isclose(r, e, rel_tol=1e-6, abs_tol=1e-6))
_failed = _tried = 0
for _args, _want in {pairs!r}:
    try:
        _a, _k = eval("(lambda *a, **k: (a, k))(" + _args + ")")
        _w = eval(_want)
    except Exception:
        continue
    _tried += 1
    try:
        _failed += not _same({name}(*_a, **_k), _w)
    except Exception:
        _failed += 1
print('EXAMPLES', _failed, _tried)
"""
ARROW = r"\s*(?:==|=>|->|➞|⇒|→|=|should\s+return|returns?)\s*"


@dataclass
class Job:
    """The programs to run for a question: one (output), or one per option (examples)."""

    # What the run checks: output (the options are outputs), examples (the options are
    # bodies), compile (compile only).
    check: str
    language: str
    sources: list[str]


def code_of(text: str) -> str:
    """The snippet in a question: inside ``` fences if any, else everything after the
    first line that asks (the data puts the ask first and the code after it)."""
    fenced = re.findall(r"```[\w+#-]*\n(.*?)```", text, re.S)
    if fenced:
        return "\n".join(fenced)
    lines = text.split("\n")
    ask = next((i for i, line in enumerate(lines[:3]) if line.rstrip().endswith("?")), 0)  # an ask over 2-3 lines
    if "\n".join(lines[ask + 1:]).strip():
        return "\n".join(lines[ask + 1:])
    m = re.search(r"\?\s*", lines[0])  # ask and code on one line: "...code?#include <stdio.h> ..."
    return lines[0][m.end():] if m else ""


def language_of(code: str) -> str | None:
    return next((lang for lang, pattern in LANGUAGES if pattern.search(code)), None)


def unflatten_c(code: str) -> str:
    """Snippets flattened onto one line still compile once each preprocessor line is its own."""
    return re.sub(r"\s*(#\s*(?:include\s*[<\"][^>\"]+[>\"]|define\s+\w+(?:\([^)]*\))?\s+\S+))\s*", r"\n\1\n", code)


def repl_to_script(code: str) -> str:
    """`>>>` sessions print each expression's repr, as the interactive interpreter does;
    parsed here (never run), so a snippet that does not parse is returned as it is."""
    lines = [re.sub(r"^\s*(>>>|\.\.\.) ?", "", line) for line in code.splitlines()
             if re.match(r"\s*(>>>|\.\.\.)", line)]
    script = "\n".join(lines)
    try:
        tree = ast.parse(script)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return script
    body = []
    for node in tree.body:
        if isinstance(node, ast.Expr):
            show = ast.parse("if (_r := None) is not None: print(repr(_r))").body[0]
            show.test.left.value = node.value
            body.append(show)
        else:
            body.append(node)
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[])))


def call_examples(code: str, name: str) -> list[tuple[str, str]]:
    """`name(args) == expected` lines (also =>, ->, =, "should return") and Input:/Output:
    pairs in the code, as (args, expected) sources."""
    pairs = [(m[1], m[2]) for m in re.finditer(rf"^\s*(?:>>>\s*)?{name}\s*\((.*)\){ARROW}(.+?)[.,;]?\s*$", code, re.M)]
    pairs += [(m[1], m[2]) for m in re.finditer(r"^\s*Input:\s*(.+?)\s*\n(?:\s*\n)?\s*Output:\s*(.+?)\s*$", code, re.M)]
    return pairs


def completion_job(text: str, choices: list[str]) -> Job | None:
    """A Python function stub whose docstring holds examples, and bodies as options: each
    body in place, run against the examples (doctest for `>>>` sessions)."""
    code = code_of(text)
    names = re.findall(r"^def (\w+)\(.*\)[^:]*:\s*$", code, re.M)
    if not names or ENV_DEPENDENT.search(text):
        return None
    if ">>>" in code:
        harness = DOCTEST
    elif pairs := call_examples(code, names[-1]):
        harness = CALLS.format(pairs=pairs, name=names[-1])
    else:
        return None
    stub = code.rstrip() + "\n"
    bodies = [textwrap.indent(textwrap.dedent(c.strip("\n")), "    ") for c in choices]
    return Job("examples", "python", [stub + body + harness for body in bodies])


def program_of(text: str) -> tuple[str | None, str]:
    """The question's snippet and its language (None: no code we recognise); C and C++
    flattened onto one line get their preprocessor lines back."""
    code = code_of(text)
    language = language_of(code) if code.strip() else None
    return language, unflatten_c(code) if language in ("c", "cpp") else code


def behaviour_job(text: str, choices: list[str]) -> Job | None:
    """A program whose behaviour the options name: compiled only (it reads an input we lack)."""
    language, code = program_of(text)
    if language is None or not any(COMPILE_OPTION.search(c) for c in choices):
        return None
    return Job("compile", language, [code])


def job_for(q: Question) -> Job | None:
    """The programs to run for `q`, or None when it is not a question this step can run."""
    text = question_text(q)
    if re.search(r"\bcomplet", text[:200], re.I):
        return completion_job(text, q.choices)
    if BEHAVIOUR.search(text[:300]):
        return behaviour_job(text, q.choices)
    if not ASKS_OUTPUT.search(text.partition("\n")[0]) or ENV_DEPENDENT.search(text):
        return None
    language, code = program_of(text)
    if language is None:
        return None
    if language == "python" and ">>>" in code:
        code = repl_to_script(code)
    return Job("output", language, [code])


# kind_of: the benchmark's kinds of question, read from the ask (the first lines), not the id
KINDS = ("completion", "behaviour", "output", "repair", "knowledge")
COMPLETION = re.compile(r"\bmissing a part\b|\bincomplete solution\b|\bmost likely completion\b|"
                        r"\bcomplete (the|this|following)\b|\bfill(ing)? in the blank", re.I)
REPAIR = re.compile(r"\bincorrect results\b|\b(fix|repair|identif\w*|find|locate)\w*\s+(the\s+|a\s+)?(bug|defect)",
                    re.I)
ASKS_OUTPUT_STRICT = re.compile(r"\b(output|print(?:s|ed)?|displayed?)\b", re.I)
CODE_CHARS = re.compile(r"[;{}()\[\]=<>]|^\s*(>>>|def |import |#include)", re.M)


def kind_of(q: Question) -> str:
    """One of KINDS, from the question's text: the kinds are answered differently (a
    blank's completion, a program's behaviour, a snippet's output, a bug's repair, the rest)."""
    text = question_text(q)
    ask = text[:300]
    if COMPLETION.search(ask):
        return "completion"
    if BEHAVIOUR.search(ask):
        return "behaviour"
    if REPAIR.search(ask) and CODE_CHARS.search(code_of(text)):
        return "repair"
    head = text[:120].casefold()
    if ASKS_OUTPUT_STRICT.search(head) and re.search(r"\b(what|which|select|predict|find)\b|\?|^output of", head) \
            and CODE_CHARS.search(code_of(text) or text[60:]):
        return "output"
    return "knowledge"
