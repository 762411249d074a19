"""`solver index`: build a FAISS index of solved questions, and query it for duplicates and neighbours.

Bad input (a missing or corrupt index folder, an embedding model other than the one the
index was built with, a dataset with no usable rows) is one line and exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from core.data import load_questions
from index.embed import DEFAULT_MODEL
from solver.console import err, out, progress_callback, reported, skipped_note

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


@app.command()
def build(
    data: Path = typer.Option(..., "--data", "-d", help="Labelled questions (CSV, JSONL or parquet)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Index folder to write (replaced if it is an index)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Embedding model: the embedded name, a local "
                              "folder or a hub id."),
    index_type: str = typer.Option("auto", "--index-type", "--kind", help="flat (exact), ivf or hnsw (approximate); "
                                   "auto: flat below 100k questions, else ivf (--kind: its old name)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF: lists probed per query (default 32)."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW: candidates kept per query (default 96)."),
    dtype: str = typer.Option("auto", "--dtype", help="Encoder precision: auto (bf16 where the hardware computes it "
                              "natively, else float32), float32, bfloat16 or float16."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts per embedding batch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Embed each solved question (question + options) and write the index folder."""
    with reported():
        from index.store import Index

        loaded = load_questions(data, labelled=True)
        with progress_callback("texts", "embedding", disable=quiet) as progress:  # on stderr: stdout is for results
            ix = Index.build(loaded.questions, model, index_type, nprobe=nprobe, ef_search=ef_search,
                             batch_size=batch_size, progress=progress, source=data, skipped=dict(loaded.skipped),
                             dtype=dtype)
        ix.save(out_dir)
    m = ix.manifest
    out.print(f"indexed {m['count']} questions from {data} into {out_dir} ({ix.index_type}, "
              f"{m['dimension']} dimensions, {m['embedding_model']}; {m['build_seconds']:.1f} s{skipped_note(loaded)})",
              highlight=False, soft_wrap=True)


@app.command()
def query(
    index: Path = typer.Option(..., "--index", "-x", help="Index folder made by `solver index build`."),
    input: Path = typer.Option(..., "--input", "-i", help="Questions (CSV, JSONL or parquet)."),
    k: int = typer.Option(5, "--k", "-k", min=0, help="Neighbours per question."),
    min_score: float = typer.Option(0.5, "--min-score", help="Smallest cosine score of a neighbour."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Must be the index's embedding model "
                                        "(default: it)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF: lists probed per query."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW: candidates kept per query."),
    require_answers: bool = typer.Option(False, "--require-answers", "--labelled", help="INPUT's rows must have "
                                         "answers: skip rows without a usable one, as eval does (--labelled: its old "
                                         "name)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no summary."),
):
    """One JSON line per question: its exact duplicate's answer (or null) and its nearest solved questions."""
    with reported():
        from index.store import Index

        ix = Index.load(index, model, nprobe=nprobe, ef_search=ef_search)
        questions = load_questions(input, labelled=require_answers).questions
        with progress_callback("texts", "querying", disable=quiet) as progress:
            results = ix.query(questions, k, min_score, progress=progress)
    for r in results:
        typer.echo(r.model_dump_json())
    if not quiet:
        dups = sum(r.duplicate is not None for r in results)
        refused = sum(r.duplicate is None and r.note is not None for r in results)
        near = sum(bool(r.neighbors) for r in results)
        err.print(f"{len(results)} questions: {dups} exact duplicates answered, {refused} copies refused "
                  f"(see note), {near} with neighbours >= {min_score}", highlight=False, soft_wrap=True)
