"""The index of solved questions: exact duplicates by a dict, neighbours by FAISS.

A folder holds three files, written into a temporary folder and renamed into place
(a reader never sees half an index): `index.faiss` (faiss.write_index of a CPU index),
`metadata.jsonl` (task_id, question, choices, answer; row i is vector i) and
`manifest.json` (model, dimension, count, data sha256, build time, index type, faiss version,
each file's sha256). No pickle. Loading checks all of it, and a bad folder is one
`IndexLoadError` line.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from pydantic import BaseModel, ValidationError

from backends.hardware import pick_dtype
from core.journal import atomic_dir, sha256_file
from core.types import LETTERS, Progress, Question, UserError
from index.embed import (
    DEFAULT_MODEL,
    canonical_name,
    dimension,
    embed_texts,
    embedding_text,
    get_model,
    normalise,
    normalise_option,
)

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
AUTO_THRESHOLD = 100_000  # auto: exact below this many vectors (flat is ~6 ms/query at 100k on 1 CPU core), IVF from it
DEFAULT_NPROBE = 32  # IVF lists visited per query (see eval/bench_index.py)
DEFAULT_EF_SEARCH = 96  # HNSW candidate list per query (see eval/bench_index.py)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
FORMAT = 1
FILES = ("index.faiss", "metadata.jsonl")


class IndexLoadError(UserError):
    """A missing, corrupt or mismatched index folder: one line, exit status 2."""


class IndexBuildError(UserError):
    """Nothing, or something unusable, to index: one line, exit status 2."""


class Duplicate(BaseModel):
    task_id: str  # the stored copy (the first, when several agree)
    answer: str  # the stored answer as a letter of the *queried* question


class Neighbor(BaseModel):
    task_id: str
    score: float  # cosine similarity


class QueryResult(BaseModel):
    task_id: str
    duplicate: Duplicate | None = None
    neighbors: list[Neighbor] = []
    note: str | None = None  # why a found copy is not a duplicate hit, or where the hit came from


def exact_key(q: Question) -> tuple[str, frozenset[str]]:
    """Same question text and the same set of options, in any order."""
    return normalise(q.question), frozenset(normalise_option(c) for c in q.choices)


def _has_gpu() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def pick_type(index_type: str, n: int) -> str:
    if index_type not in INDEX_TYPES:
        raise IndexBuildError(f"index type '{index_type}': not one of {', '.join(INDEX_TYPES)}")
    if index_type != "auto":
        return index_type
    return "flat" if n < AUTO_THRESHOLD else "ivf"  # IVF: best recall in eval/bench_index.py, and on GPUs


def ivf_nlist(n: int) -> int:
    """About 4*sqrt(n) lists, but at least 39 training points per list (k-means' floor)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def make_index(vectors: np.ndarray, index_type: str, seed: int = 0) -> tuple[faiss.Index, dict]:
    """A CPU index of `index_type` (flat, ivf or hnsw) holding `vectors` (unit rows), and its build parameters."""
    n, d = vectors.shape
    if index_type == "flat":
        index, params = faiss.IndexFlatIP(d), {}
    elif index_type == "ivf":
        nlist = ivf_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors if n <= 64 * nlist else vectors[np.sort(rng.choice(n, 64 * nlist, replace=False))]
        index.cp.seed = seed
        index.train(sample)
        params = {"nlist": nlist}
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    else:
        raise IndexBuildError(f"index type '{index_type}': not one of flat, ivf, hnsw")
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index, params


def _check(questions: list[Question]) -> None:
    if not questions:
        raise IndexBuildError("no labelled questions to index")
    seen = set()
    for q in questions:
        if q.answer is None or q.answer not in q.letters:
            raise IndexBuildError(f"question '{q.task_id}': answer {q.answer!r} is not one of {q.letters}")
        if q.task_id in seen:
            raise IndexBuildError(f"question '{q.task_id}': duplicate task_id")
        seen.add(q.task_id)


class Index:
    """Solved questions, searchable by exact copy and by embedding.

    >>> ix = Index.build(questions)            # labelled Questions; all-MiniLM-L6-v2
    >>> ix.save("idx"); ix = Index.load("idx")
    >>> ix.query(new_questions, k=5)           # [QueryResult, ...]
    """

    def __init__(self, records: list[Question], cpu_index: faiss.Index, manifest: dict, model=None):
        self.records = records
        self.manifest = manifest
        self._cpu = cpu_index
        self._model = model
        self._row = {q.task_id: i for i, q in enumerate(records)}
        self._exact: dict[tuple, list[int]] = defaultdict(list)
        self._norm = [normalise(q.question) for q in records]
        self._texts = Counter(self._norm)
        for i, q in enumerate(records):
            self._exact[exact_key(q)].append(i)
        params = manifest.get("index_params", {})
        self._search = self._on_device(cpu_index)
        self.set_search_params(nprobe=params.get("nprobe"), ef_search=params.get("efSearch"))

    # ---- building, saving, loading -------------------------------------------------

    @classmethod
    def build(cls, questions: list[Question], model: str = DEFAULT_MODEL, index_type: str = "auto", *,
              nprobe: int | None = None, ef_search: int | None = None, batch_size: int = 64,
              progress: Progress | None = None, source: str | Path | None = None, skipped: dict | None = None,
              dtype: str = "auto") -> Index:
        """Embed labelled questions (question + options) and index them (dtype: solver.hardware)."""
        _check(questions)
        pick_type(index_type, len(questions))  # a bad type fails before the model loads
        dtype = pick_dtype(dtype)
        encoder = get_model(model, dtype=dtype)
        start = time.perf_counter()
        vectors = embed_texts(encoder, [embedding_text(q) for q in questions], batch_size, progress)
        ix = cls.from_vectors(questions, vectors, model, index_type, nprobe=nprobe, ef_search=ef_search,
                              source=source, skipped=skipped, dtype=dtype, encoder=encoder)
        ix.manifest["embed_seconds"] = round(time.perf_counter() - start - ix.manifest["build_seconds"], 3)
        ix.manifest["build_seconds"] = round(time.perf_counter() - start, 3)
        return ix

    @classmethod
    def from_vectors(cls, questions: list[Question], vectors: np.ndarray, model: str = DEFAULT_MODEL,
                     index_type: str = "auto", *, nprobe: int | None = None, ef_search: int | None = None,
                     source: str | Path | None = None, skipped: dict | None = None, dtype: str = "float32",
                     encoder=None) -> Index:
        """An index of questions already embedded by `model` (unit rows, in question order)."""
        _check(questions)
        if vectors.ndim != 2 or len(vectors) != len(questions):
            raise IndexBuildError(f"{len(questions)} questions but vectors of shape {vectors.shape}")
        index_type = pick_type(index_type, len(questions))
        start = time.perf_counter()
        cpu_index, params = make_index(vectors, index_type)
        if index_type == "ivf":
            params["nprobe"] = nprobe or DEFAULT_NPROBE
        if index_type == "hnsw":
            params["efSearch"] = ef_search or DEFAULT_EF_SEARCH
        import sentence_transformers

        manifest = {
            "format": FORMAT,
            "embedding_model": canonical_name(model),
            "embedding_dtype": dtype,
            "dimension": int(vectors.shape[1]),
            "count": len(questions),
            "data": str(source) if source else None,
            "data_sha256": sha256_file(Path(source)) if source else None,
            "skipped_rows": dict(skipped or {}),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - start, 3),
            "index_type": index_type,
            "index_params": params,
            "metric": "inner product of L2-normalised vectors (cosine)",
            "text": "question without 'Question:', then its options sorted, one per line",
            "faiss_version": faiss.__version__,
            "sentence_transformers_version": sentence_transformers.__version__,
        }
        return cls(list(questions), cpu_index, manifest, encoder)

    def save(self, folder: str | Path) -> Path:
        """Write the folder whole or not at all; an existing index folder is replaced."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise IndexBuildError(f"{folder}: exists and is not a folder")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / "manifest.json").is_file():
            raise IndexBuildError(f"{folder}: a non-empty folder that is not an index; choose another --out")
        manifest = {}

        def write(tmp: Path) -> None:
            faiss.write_index(self._cpu, str(tmp / "index.faiss"))
            with (tmp / "metadata.jsonl").open("w", encoding="utf-8") as f:
                for q in self.records:
                    f.write(json.dumps({"task_id": q.task_id, "question": q.question,
                                        "choices": q.choices, "answer": q.answer}, ensure_ascii=False) + "\n")
            manifest.update(self.manifest, files={name: sha256_file(tmp / name) for name in FILES})
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            for name in (*FILES, "manifest.json"):
                with (tmp / name).open("rb") as f:
                    os.fsync(f.fileno())

        atomic_dir(folder, write)
        self.manifest = manifest
        return folder

    @classmethod
    def load(cls, folder: str | Path, model: str | None = None, *, nprobe: int | None = None,
             ef_search: int | None = None) -> Index:
        """Read and check an index folder; `model`, when given, must be the one it was built with."""
        folder = Path(folder)
        if not folder.is_dir():
            raise IndexLoadError(f"{folder}: no such index folder")
        mpath = folder / "manifest.json"
        if not mpath.is_file():
            raise IndexLoadError(f"{folder}: no manifest.json (not an index folder, or a build that did not finish)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
            count, dim, built_with = (int(manifest["count"]), int(manifest["dimension"]),
                                      str(manifest["embedding_model"]))
            files = {name: str(manifest["files"][name]) for name in FILES}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise IndexLoadError(f"{mpath}: not a valid index manifest ({type(e).__name__}: {e})") from None
        if model is not None and canonical_name(model) != built_with:
            raise IndexLoadError(f"{folder}: built with embedding model '{built_with}', asked to use "
                                 f"'{canonical_name(model)}' (rebuild the index, or leave out --model)")
        for name in FILES:
            if not (folder / name).is_file():
                raise IndexLoadError(f"{folder}: {name} is missing")
            if sha256_file(folder / name) != files[name]:
                raise IndexLoadError(f"{folder / name}: corrupt (its sha256 differs from the manifest's)")
        try:
            cpu_index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as e:
            raise IndexLoadError(f"{folder / 'index.faiss'}: not a readable FAISS index "
                                 f"({str(e).strip().splitlines()[-1]})") from None
        records = []
        with (folder / "metadata.jsonl").open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                try:
                    q = Question.model_validate_json(line)
                except ValidationError as e:
                    raise IndexLoadError(f"{folder / 'metadata.jsonl'}: line {i}: not a stored question "
                                         f"({e.errors()[0]['msg']})") from None
                if q.answer is None or q.answer not in q.letters:
                    raise IndexLoadError(f"{folder / 'metadata.jsonl'}: line {i}: answer {q.answer!r} "
                                         f"is not one of {q.letters}")
                records.append(q)
        if not (cpu_index.ntotal == len(records) == count):
            raise IndexLoadError(f"{folder}: counts differ (index {cpu_index.ntotal}, metadata {len(records)}, "
                                 f"manifest {count})")
        if cpu_index.d != dim:
            raise IndexLoadError(f"{folder}: index dimension {cpu_index.d}, manifest {dim}")
        params = manifest.setdefault("index_params", {})
        if nprobe:
            params["nprobe"] = nprobe
        if ef_search:
            params["efSearch"] = ef_search
        return cls(records, cpu_index, manifest)

    # ---- searching ------------------------------------------------------------------

    def _on_device(self, cpu_index: faiss.Index) -> faiss.Index:
        """A GPU copy for flat and IVF when this faiss sees a GPU; the CPU index otherwise."""
        if _has_gpu() and self.index_type in ("flat", "ivf"):
            return faiss.index_cpu_to_all_gpus(cpu_index)
        return cpu_index

    @property
    def index_type(self) -> str | None:
        """flat, ivf or hnsw (`index_kind` in a manifest written before the rename)."""
        return self.manifest.get("index_type", self.manifest.get("index_kind"))

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Recall against speed: IVF lists probed, HNSW candidates kept."""
        if self.index_type == "ivf" and nprobe:
            self.manifest["index_params"]["nprobe"] = nprobe
            space = faiss.GpuParameterSpace() if self._search is not self._cpu else faiss.ParameterSpace()
            space.set_index_parameter(self._search, "nprobe", nprobe)
        if self.index_type == "hnsw" and ef_search:
            self.manifest["index_params"]["efSearch"] = ef_search
            self._cpu.hnsw.efSearch = ef_search

    @property
    def model(self):
        if self._model is None:
            # this machine's dtype, not the builder's: bf16 and float32 vectors agree to a cosine of ~0.9999
            self._model = get_model(self.manifest["embedding_model"])
            dim = dimension(self._model)
            if dim != self.manifest["dimension"]:
                raise IndexLoadError(f"embedding model '{self.manifest['embedding_model']}' gives {dim} dimensions, "
                                     f"the index holds {self.manifest['dimension']}")
        return self._model

    def __len__(self) -> int:
        return len(self.records)

    def get(self, task_id: str) -> Question | None:
        """A stored question (with its answer) by id."""
        i = self._row.get(task_id)
        return None if i is None else self.records[i]

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search of unit vectors: (scores, rows), -1 rows where fewer were found."""
        k = max(1, min(k, self._search.ntotal, 2048))  # 2048: the GPU's most
        return self._search.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def duplicate(self, q: Question) -> tuple[Duplicate | None, str | None]:
        """The stored answer of an exact copy, as a letter of `q`; or None and why not."""
        rows = [i for i in self._exact.get(exact_key(q), []) if self.records[i].task_id != q.task_id]
        if not rows:
            return None, None
        ids = ", ".join(self.records[i].task_id for i in rows)
        options = [normalise_option(c) for c in q.choices]
        if len(set(options)) < len(options):
            return None, f"exact copy {ids} not used: the question lists the same option text twice"
        mapped = {}
        for i in rows:
            rec = self.records[i]
            text = normalise_option(rec.choices[LETTERS.index(rec.answer)])
            mapped[rec.task_id] = LETTERS[options.index(text)]
        if len(set(mapped.values())) > 1:
            said = ", ".join(f"{t}: {a}" for t, a in mapped.items())
            return None, f"stored copies disagree (answers as this question's letters: {said})"
        first = self.records[rows[0]]
        letter = mapped[first.task_id]
        return Duplicate(task_id=first.task_id, answer=letter), (
            f"exact copy of {ids} (stored answer {first.answer}, this question's {letter})")

    def query(self, questions: list[Question], k: int = 5, min_score: float = 0.5, *,
              exclude_same_text: bool = True, batch_size: int = 64,
              progress: Progress | None = None) -> list[QueryResult]:
        """Exact duplicates and the top-k neighbours (cosine >= min_score) of each question.

        A question never finds itself: stored rows with its task_id, or (exclude_same_text)
        with its normalised question text, are not neighbours; so evaluating on labelled
        data cannot read its own answer through a neighbour.
        """
        if k < 0:
            raise UserError(f"k: {k} is negative")
        results = []
        for q in questions:
            dup, note = self.duplicate(q)
            results.append(QueryResult(task_id=q.task_id, duplicate=dup, note=note))
        if k == 0 or not questions:
            return results
        vectors = embed_texts(self.model, [embedding_text(q) for q in questions], batch_size, progress)
        texts = [normalise(q.question) for q in questions]
        excluded = [self._texts[t] if exclude_same_text else 0 for t in texts]
        excluded = [e + (q.task_id in self._row) for e, q in zip(excluded, questions)]
        step = 1024
        for start in range(0, len(questions), step):
            part = slice(start, start + step)
            scores, rows = self.search(vectors[part], k + max(excluded[part]))
            for j, (srow, irow) in enumerate(zip(scores, rows)):
                q, res = questions[start + j], results[start + j]
                hits = []
                for s, i in zip(srow, irow):
                    if i < 0 or s < min_score:
                        continue
                    rec = self.records[i]
                    if rec.task_id == q.task_id or (exclude_same_text and self._norm[i] == texts[start + j]):
                        continue
                    hits.append(Neighbor(task_id=rec.task_id, score=round(float(s), 6)))
                hits.sort(key=lambda n: -n.score)
                res.neighbors = hits[:k]
        return results
