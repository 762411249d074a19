"""How much running the code settles, with no LLM: per language, on train.csv's hash splits.

Usage: python eval/bench_execute.py [--data TRAIN (default: $CODEMCQ_BENCH_DATA/train.csv)] [--split dev]
                                    [--workers 2] [--timeout 5]

For every question execution/recognise.py can run (output prediction: the snippet once;
completion with examples: each option's body against the docstring's examples;
behaviour: the program compiled only), the
programs run in the sandbox (execution/sandbox.py; runs cached in the cache root's exec/), and what the
runs leave is compared with the label, per language and kind of evidence: runs, settled
(exactly one option left), right (that option is the label), precision (right / settled),
how often the label was among the options ruled out, and, where the runs narrow the
options without settling them, how often the label stays. These decide whether the graph
may trust a kind of evidence to settle a question, or to remove options.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from report import Timer, bench_file, labelled  # noqa: E402

from backends.hardware import machine  # noqa: E402
from core.config import ExecuteConfig  # noqa: E402
from execution import sandbox  # noqa: E402
from execution.evidence import evidence  # noqa: E402
from execution.recognise import job_for  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--split", default="dev", help="dev, test, train or all")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    if sandbox.available() is None:
        sys.exit("no sandbox (bwrap) on this machine: nothing is run")
    qs = labelled(args.data, args.split)
    jobs = [(q, j) for q in qs if (j := job_for(q)) and sandbox.runtimes()[j.language]]
    with Timer() as t:
        results = sandbox.run_jobs([j for _, j in jobs], ExecuteConfig(timeout_s=args.timeout, workers=args.workers))
    seconds = t.seconds
    rows: dict[tuple[str, str], Counter] = {}
    for (q, j), rs in zip(jobs, results):
        e = evidence(q, j, rs)
        tier = e.check if e.status in ("ok", "compile_error", "runtime_error") else "other"
        c = rows.setdefault((j.language, tier), Counter())
        c["runs"] += 1
        c["settled"] += e.settled is not None
        c["right"] += e.settled is not None and e.settled == q.answer
        c["ruled_out_right"] += bool(e.consistent) and q.answer not in e.consistent
        narrowed = 1 < len(e.consistent) < len(q.choices)
        c["narrowed"] += narrowed
        c["narrowed_kept"] += narrowed and q.answer in e.consistent
        c["options_left"] += len(e.consistent) if narrowed else 0
    print(f"{args.split}: {len(qs)} questions, {len(jobs)} runnable ({machine()}; {seconds:.0f} s for the runs, "
          f"{args.workers} at a time, cached runs free)")
    print("| language | evidence | questions | settled | right | precision | label ruled out | narrowed | label kept |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    total = Counter()
    for (lang, tier), c in sorted(rows.items()):
        total.update({f"{tier} {k}": v for k, v in c.items()})
        prec = f"{c['right'] / c['settled']:.2f}" if c["settled"] else ""
        print(f"| {lang} | {tier} | {c['runs']} | {c['settled']} | {c['right']} | {prec} | {c['ruled_out_right']} "
              f"| {c['narrowed']} | {c['narrowed_kept']} |")
    for tier in ("output", "error", "examples", "compile"):
        s, r, n = total[f"{tier} settled"], total[f"{tier} right"], total[f"{tier} narrowed"]
        print(f"{tier}: settled {s} of {len(qs)} questions ({s / max(len(qs), 1):.1%}), "
              f"precision {r / s if s else 0:.2f}; "
              f"narrowed {n} to {total[f'{tier} options_left'] / max(n, 1):.1f} options, the label kept in "
              f"{total[f'{tier} narrowed_kept']}")


if __name__ == "__main__":
    main()
