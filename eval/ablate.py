"""Per-node ablation of the graph, for one or more models: tuned on train's dev split,
reported on its test split.

Usage: python eval/ablate.py --data TRAIN --config configs/graph.yaml
                             [--model SPEC ...] [--dev-n N] [--test-n N] [--time-n N] [--z 2.0] [--out DIR]
                             [--no-tune] [--rows "full - execute,..."]

1. Tune ONE graph for all the models given, by coordinate ascent on the fixed hash split
   `dev` of the data, starting from the simplest graph (the duplicate shortcut, one option
   order, no verify, no re-answer): the duplicate shortcut, both option orders, which
   steps run (verify, re-answer with worked examples, or both), then the thresholds. A
   change is kept only if its wrong-to-right flips beat its right-to-wrong flips, pooled
   over the models, by z standard deviations of that difference (sqrt of the flips;
   default 2, since some 35 candidates are tried): at a few hundred questions a gain of a
   few questions is noise, and tuning on noise is what made self-verification hurt on test.
2. Report on the split `test`, which tuning never saw, per model: the single-pass
   baseline, the answer step alone, the full tuned graph, and the full graph with each of
   its nodes removed: accuracy with a 95% interval, the right-to-wrong and wrong-to-right
   flips each node causes, LLM prompts and prompt tokens per question.
3. Seconds per question for the baseline and the full graph, timed side by side on
   uncached runs of the first --time-n test questions (all other runs answer repeated
   prompts from an on-disk cache: temperature 0, same prompt, same answer).
The retrieval index holds only the split `train` of the data, so neither split is in it.
Writes DIR/ablation.md, DIR/ablation.json, DIR/tuned.yaml and DIR/ablation-<model>.png.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from report import ROOT, backbone_pair, bench_file, chart, dev_test, markdown, right, row, run

KMAX = 3  # the most worked examples a re-answer may get


def field(section, name, values):
    return f"{section}.{name}", [{section: {name: v}} for v in values]


# Which steps run after `answer`: one coordinate, since verify alone changes no letter
# (its rejections act through the re-answer) and a re-answer needs examples or rejections.
STEPS = ("steps", [
    {"verify": {"enabled": False}, "reanswer": {"enabled": False}},
    {"verify": {"enabled": False}, "reanswer": {"enabled": True}, "retrieve": {"floor": 0.8}},
    {"verify": {"enabled": True}, "reanswer": {"enabled": True}, "retrieve": {"floor": 1.01}},
    {"verify": {"enabled": True}, "reanswer": {"enabled": True}, "retrieve": {"floor": 0.8}},
])
GRID = [
    field("retrieve", "duplicates", [True, False]),
    field("execute", "enabled", [True, False]),
    field("execute", "trust", [["output", "examples", "compile"], ["output", "examples", "compile", "error"],
                               ["output", "examples"], ["output"]]),
    field("execute", "rule_out", [["examples", "compile"], [], ["compile"]]),
    field("answer", "orders", [1, 2]),
    STEPS,
    field("retrieve", "k", [1, 2, KMAX]),
    field("retrieve", "floor", [0.7, 0.8, 0.85, 0.9, 0.95, 1.01]),
    field("graph", "accept", [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01]),
    field("verify", "accept", [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7]),
    field("reanswer", "weight", [0.25, 0.5, 0.75, 1.0]),
]


def with_(cfg, **sections):
    """A copy of cfg with some fields of some sections replaced: with_(c, verify={"enabled": False})."""
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


def simplest(cfg):
    """The tuning's start: a graph with only the duplicate shortcut."""
    return with_(cfg, graph={"enabled": True}, answer={"orders": 1}, verify={"enabled": False},
                 reanswer={"enabled": False}, retrieve={"enabled": True, "duplicates": True},
                 execute={"enabled": False})


class MemoIndex:
    """The same retrieval for every config: each question queried once, for the most neighbours
    any config uses (the re-answer keeps its first `retrieve.k`)."""

    def __init__(self, index, k: int):
        self.index, self.k, self.memo = index, k, {}

    def query(self, questions, min_score=0.0, **_):
        todo = [q for q in questions if q.task_id not in self.memo]
        if todo:
            self.memo.update((q.task_id, r)
                             for q, r in zip(todo, self.index.query(todo, k=self.k, min_score=min_score)))
        return [self.memo[q.task_id] for q in questions]

    def get(self, task_id):
        return self.index.get(task_id)


class Model:
    """One backbone, uncached (for timing) and cached, with its dev and test questions."""

    def __init__(self, cfg, spec, dev, test):
        self.cfg = cfg.with_backbones(cfg.backbone.model_copy(update={"model": spec})) if spec else cfg
        self.name = Path(self.cfg.backbone.model).stem
        raw, cached = backbone_pair(self.cfg.backbone)
        self.raw, self.cached = {self.cfg.backbone.label: raw}, {self.cfg.backbone.label: cached}
        self.dev, self.test = dev, test

    def on(self, cfg):
        """cfg with this model as its backbone."""
        return cfg.with_backbones(self.cfg.backbone)


def dev_right(cfg, models, index):
    return set().union(*(right(run(m.on(cfg), m.cached, index, m.dev)[0], m.dev, m.name) for m in models))


def significant(new: set, old: set, z: float) -> bool:
    """More wrong-to-right than right-to-wrong flips, by z standard deviations of the difference."""
    wins, losses = len(new - old), len(old - new)
    return wins - losses >= max(1.0, z * math.sqrt(wins + losses))


def tune(cfg, models, index, z, log):
    best = dev_right(cfg, models, index)
    n = sum(len(m.dev) for m in models)
    log(f"dev start: {len(best)}/{n}")
    for name, patches in GRID:
        for patch in patches:
            c = with_(cfg, **patch)
            if c == cfg:
                continue
            got = dev_right(c, models, index)
            keep = significant(got, best, z)
            log(f"  {'KEPT' if keep else 'no  '} dev {len(got)}/{n} (+{len(got - best)} -{len(best - got)}) "
                f"{name} = {patch}")
            if keep:
                best, cfg = got, c
    return cfg, len(best) / n


def rows_for(tuned):
    """The report's configurations: 'full - X' for each node the tuned graph runs, 'full + X'
    for each it left out (with the config file's thresholds), so every node's effect on
    test is measured either way."""
    rows = {"baseline (single pass)": with_(tuned, graph={"enabled": False}, answer={"orders": 1}),
            "answer only": with_(tuned, verify={"enabled": False}, retrieve={"enabled": False},
                                 reanswer={"enabled": False}, execute={"enabled": False}),
            "full graph": tuned}
    if tuned.retrieve.enabled and tuned.retrieve.duplicates:
        rows["full - duplicate shortcut"] = with_(tuned, retrieve={"duplicates": False})
    if tuned.execute.enabled:
        rows["full - execute"] = with_(tuned, execute={"enabled": False})
        for kind in ("output", "error", "examples", "compile"):  # each kind of evidence a run gives
            trust = ([k for k in tuned.execute.trust if k != kind] if kind in tuned.execute.trust
                     else [*tuned.execute.trust, kind])
            rows[f"full {'-' if kind in tuned.execute.trust else '+'} {kind} evidence"] = with_(
                tuned, execute={"trust": trust})
        if tuned.execute.rule_out:
            rows["full - elimination"] = with_(tuned, execute={"rule_out": []})
    else:
        rows["full + execute"] = with_(tuned, execute={"enabled": True})
    if tuned.answer.orders > 1:
        rows["full - reversed order"] = with_(tuned, answer={"orders": 1})
    if tuned.verify.enabled:
        rows["full - verify"] = with_(tuned, verify={"enabled": False})
    if tuned.reanswer.enabled and tuned.retrieve.floor <= 1:
        rows["full - worked examples"] = with_(tuned, retrieve={"floor": 1.01})
    if tuned.reanswer.enabled:
        rows["full - reanswer"] = with_(tuned, reanswer={"enabled": False})
    if tuned.answer.orders == 1:
        rows["full + reversed order"] = with_(tuned, answer={"orders": 2})
    if not tuned.reanswer.enabled:
        for label, patch in (("re-answer with examples", STEPS[1][1]), ("verify + re-answer", STEPS[1][3])):
            rows[f"full + {label}"] = with_(tuned, **patch)
    return rows


def report(m, tuned, index, time_n, only=None):
    rows = {k: m.on(c) for k, c in rows_for(tuned).items()
            if not only or k in only or k in ("baseline (single pass)", "full graph")}
    timed_qs = m.test[:time_n]
    timed = {}
    for _ in range(2):  # interleaved, best of two: the machine is shared
        for k in ("baseline (single pass)", "full graph"):
            s = run(rows[k], m.raw, index, timed_qs)[1] / len(timed_qs)
            timed[k] = min(s, timed.get(k, s))
    preds = {k: run(c, m.cached, index, m.test)[0] for k, c in rows.items()}
    ok = {k: right(p, m.test) for k, p in preds.items()}
    table = []
    for k in rows:
        # what the node does: the graph with it against the graph without it
        with_node, without = (ok["full graph"], ok[k]) if k.startswith("full -") else (ok[k], ok["full graph"])
        flips = (len(without - with_node), len(with_node - without)) if k.startswith(("full -", "full +")) else None
        table.append(row(k, preds[k], m.test, ok[k], timed.get(k), flips))
    b, f = ok["baseline (single pass)"], ok["full graph"]
    return table, (len(b - f), len(f - b))


def section(name, table, vs_base, n, time_n):
    return [f"### {name} (split test, {n} questions)", "", *markdown(table), "",
            (f"Flips: the graph with the node against the graph without it. Full graph against the baseline: "
             f"{vs_base[0]} right-to-wrong, {vs_base[1]} wrong-to-right. s/q: uncached, best of two interleaved "
             f"runs over the first {time_n} test questions."), ""]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--config", default=str(ROOT / "configs/graph.yaml"))
    ap.add_argument("--model", action="append", default=None, help="a backbone.model to tune and report on (repeat)")
    ap.add_argument("--dev-n", type=int, default=None)
    ap.add_argument("--test-n", type=int, default=None)
    ap.add_argument("--time-n", type=int, default=128)
    ap.add_argument("--z", type=float, default=2.0, help="significance a tuning change needs (0: any gain)")
    ap.add_argument("--no-tune", action="store_true", help="report the config as it is")
    ap.add_argument("--rows", default=None, help="report only these rows (comma-separated), besides baseline and "
                                                 "full graph: for a slow model")
    ap.add_argument("--out", default=str(ROOT / "eval" / "results" / "ablation"))
    args = ap.parse_args()

    import yaml

    from core.config import load_config, with_labelled
    from index.cached import cached_index

    cfg = with_labelled(load_config(args.config), args.data, held_out=True)[0]  # retrieval: split train only
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev, test = dev_test(args.data, args.dev_n, args.test_n)
    models = [Model(cfg, spec, dev, test) for spec in (args.model or [None])]
    index = MemoIndex(cached_index(cfg.retrieve.data, cfg.retrieve.split), k=KMAX)
    log_lines = []

    def log(s):
        print(s, flush=True)
        log_lines.append(s)

    tuned, dev_acc = (cfg, None) if args.no_tune else tune(simplest(cfg), models, index, args.z, log)
    names = ", ".join(m.cfg.backbone.model for m in models)
    tuning = ("thresholds as in the config, not tuned" if args.no_tune else
              f"tuned jointly for {names} on train.csv split dev ({len(dev)} questions each; pooled dev accuracy "
              f"{dev_acc:.4f}; a change kept only with net flips >= {args.z} sd)")
    lines = [f"Graph ablation: {tuning}; reported on split test; index: split train.", "",
             (f"Tuned: duplicates {tuned.retrieve.duplicates}, execute {tuned.execute.enabled} (trusted: "
              f"{', '.join(tuned.execute.trust)}; eliminating: {', '.join(tuned.execute.rule_out) or 'none'}), "
              f"option orders {tuned.answer.orders}, verify "
             f"{tuned.verify.enabled}, reanswer {tuned.reanswer.enabled} (examples: floor {tuned.retrieve.floor}, "
             f"k {tuned.retrieve.k}), graph.accept {tuned.graph.accept}, verify.accept {tuned.verify.accept}, "
             f"reanswer.weight {tuned.reanswer.weight}."), ""]
    results = {}
    for m in models:
        table, vs_base = report(m, tuned, index, args.time_n, args.rows.split(",") if args.rows else None)
        results[m.name] = {"table": table, "vs_baseline": vs_base}
        lines += section(m.cfg.backbone.model, table, vs_base, len(test), args.time_n)
        chart(table, out / f"ablation-{m.name}.png", f"{m.name}: accuracy on train.csv split test (n={len(test)})")
        cache = next(iter(m.cached.values()))
        lines += [f"LLM cache {m.name}: {cache.hits} hits, {cache.misses} prompts sent (tuning included).", ""]
    lines += ["Tuning log:", "", "```", *log_lines, "```"]
    md = "\n".join(lines) + "\n"
    print(md)
    (out / "ablation.md").write_text(md)
    (out / "ablation.json").write_text(json.dumps({"models": results, "tuned": tuned.model_dump(),
                                                   "dev_accuracy": dev_acc, "dev_n": len(dev), "test_n": len(test)},
                                                  indent=2) + "\n")
    (out / "tuned.yaml").write_text(yaml.safe_dump(tuned.model_dump(exclude={"name", "backbones"}), sort_keys=False))


if __name__ == "__main__":
    main()
