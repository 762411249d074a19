"""Retrieval index speed and recall: embedding throughput, build and query latency, flat vs IVF vs HNSW at scale.

Usage: python eval/bench_index.py [--data TRAIN (default: $CODEMCQ_BENCH_DATA/train.csv)] [--queries-from test.csv]
                                  [--n-embed 256] [--dtype auto|float32|bfloat16]
                                  [--scale 100000,1000000] [--dim 384] [--n-queries 1000]
                                  [--synthetic clustered|uniform|both] [--skip-embed] [--skip-train]

Three parts, each printing its figures:
  embed   texts/s (and word pieces/s) of all-MiniLM-L6-v2 in float32 and in bfloat16 on a
          fixed random sample of the training texts (interleaved rounds, best of each), and
          the cosine between the two dtypes' vectors; says whether the CPU does bf16 natively
          (AVX512-BF16 / AMX) or emulates it.
  train   `Index.build` on the shared train set (embedding + FAISS), then `Index.query` latency
          p50/p99 for single questions (embedding included, and FAISS alone) and batched, on the
          shared test questions; recall@5 of IVF and HNSW against flat on those real vectors.
  scale   synthetic unit vectors, n x dim per --scale entry: memory (serialized bytes), build
          time, single-query latency p50/p99 (one thread: a latency-bound server), batched
          per-query time (all threads), recall@5 against exact search, for flat, IVF
          (nlist ~ 4 sqrt(n), nprobe swept) and HNSW (M 32, efConstruction 80, efSearch swept).
          `clustered` is a two-level mixture of gaussians (n/2000 topics, n/100 sub-clusters),
          closer to how sentence embeddings sit; `uniform` (random directions) is the worst case for IVF and HNSW.
Targets: single-query p50 under 1 ms at 100k vectors; recall@5 >= 0.95 at the defaults
(nprobe 32, efSearch 96). The machine may be shared: run it on a quiet one for timings you quote.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
TOPIC_SPREAD = 0.8  # clustered: sub-cluster centres around a unit-variance topic centre
SPREAD = 1.0  # clustered: points around their sub-cluster centre (per dimension)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from report import Timer, bench_file, labelled  # noqa: E402

from backends.hardware import cpu_has_bf16, describe, pick_dtype  # noqa: E402
from core.data import load_questions  # noqa: E402
from index.embed import embed_texts, embedding_text, load_embedder  # noqa: E402
from index.store import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, Index, ivf_nlist, make_index  # noqa: E402


def pct(xs, p):
    return float(np.percentile(np.asarray(xs), p))


def ms(x):
    return f"{x * 1e3:.3f} ms"


def recall_at(truth: np.ndarray, got: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got)]))


def bf16_support() -> str:
    import torch

    native = cpu_has_bf16()
    mkldnn = torch.backends.mkldnn.is_available()
    op = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        onednn = bool(op()) if op else None
    except Exception:
        onednn = None
    cap = torch.backends.cpu.get_cpu_capability()
    verdict = "native (AVX512-BF16/AMX)" if native else "NOT native: bf16 is emulated, expect no gain"
    return f"bf16 on this CPU: {verdict}; mkldnn {mkldnn}, oneDNN bf16 {onednn}, torch capability {cap}"


# ---- embed -----------------------------------------------------------------------------


def bench_embed(texts: list[str], rounds: int = 2) -> None:
    print(f"\n== embed: all-MiniLM-L6-v2 on {len(texts)} training texts (random sample), torch threads {_threads()}")
    print(describe(pick_dtype()))
    print(bf16_support())
    models = {"float32": load_embedder(dtype="float32"), "bfloat16": load_embedder(dtype="bfloat16")}
    pieces = sum(min(len(models["float32"].tokenizer(t)["input_ids"]), models["float32"].max_seq_length) for t in texts)
    best, vecs = {}, {}
    for name, m in models.items():
        embed_texts(m, texts[:16])  # warm-up
    for _ in range(rounds):
        for name, m in models.items():
            with Timer() as t:
                vecs[name] = embed_texts(m, texts)
            best[name] = min(best.get(name, 1e9), t.seconds)
    for name in models:
        print(f"  {name:>8}: {len(texts) / best[name]:7.1f} texts/s  {pieces / best[name]:8.0f} word pieces/s")
    cos = (vecs["float32"] * vecs["bfloat16"]).sum(1)
    print(f"  bf16 / fp32 speed-up {best['float32'] / best['bfloat16']:.2f}x; "
          f"cosine(fp32, bf16) min {cos.min():.5f} mean {cos.mean():.5f}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ---- train -----------------------------------------------------------------------------


def bench_train(data: Path, queries_from: Path, dtype: str, n_single: int, n_batch: int) -> None:
    solved = labelled(data)
    test = load_questions(queries_from).questions
    print(f"\n== train: Index.build on {data.name} ({len(solved)} questions, dtype {dtype}), "
          f"queries from {queries_from.name}")
    with Timer() as t:
        ix = Index.build(solved, dtype=dtype, source=data)
    total = t.seconds
    m = ix.manifest
    print(f"  build {total:.1f} s: embedding {m['embed_seconds']:.1f} s "
          f"({len(solved) / m['embed_seconds']:.1f} texts/s), "
          f"FAISS flat {m['build_seconds'] - m['embed_seconds']:.3f} s")
    rng = np.random.default_rng(0)
    pick = [test[i] for i in rng.choice(len(test), min(n_single, len(test)), replace=False)]
    ix.query(pick[:4], k=5)  # warm-up
    single = []
    for q in pick:
        with Timer() as t:
            ix.query([q], k=5)
        single.append(t.seconds)
    qv = embed_texts(ix.model, [embedding_text(q) for q in pick])
    faiss_only = []
    for v in qv:
        with Timer() as t:
            ix.search(v[None], 5 + 8)
        faiss_only.append(t.seconds)
    print(f"  single query (embed + search + duplicate): p50 {ms(pct(single, 50))} p99 {ms(pct(single, 99))} "
          f"over {len(pick)}")
    print(f"  single query, FAISS flat search alone:     p50 {ms(pct(faiss_only, 50))} p99 {ms(pct(faiss_only, 99))}")
    batch = test[:n_batch]
    with Timer() as t:
        res = ix.query(batch, k=5)
    b = t.seconds
    print(f"  batched ({len(batch)} questions, one call): {b:.2f} s, {ms(b / len(batch))} per question; "
          f"{sum(r.duplicate is not None for r in res)} exact duplicates among them")
    dups = ix.query(test, k=0)
    print(f"  exact duplicates over all {len(test)} test questions: "
          f"{sum(r.duplicate is not None for r in dups)} answered, "
          f"{sum(r.duplicate is None and r.note is not None for r in dups)} refused")
    # recall of the approximate kinds on the real vectors (the train vectors, re-embedded test queries)
    vectors = np.vstack([ix._cpu.reconstruct(i) for i in range(ix._cpu.ntotal)])
    _, truth = ix.search(qv, 5)
    for kind in ("ivf", "hnsw"):
        approx = Index.from_vectors(solved, vectors, index_type=kind, dtype=dtype)
        _, got = approx.search(qv, 5)
        print(f"  {kind}: recall@5 vs flat on real vectors {recall_at(truth, got):.3f} "
              f"({approx.manifest['index_params']})")


# ---- scale -----------------------------------------------------------------------------


def synthetic(n: int, d: int, kind: str, rng) -> np.ndarray:
    """Unit vectors: uniform directions, or a two-level mixture of gaussians (n/2000 topics,
    n/100 sub-clusters around them, points around those), so that a point's neighbours are
    partly in nearby sub-clusters, as with real sentence embeddings."""
    if kind == "uniform":
        x = rng.standard_normal((n, d), dtype=np.float32)
    else:
        topics = rng.standard_normal((max(1, n // 2000), d), dtype=np.float32)
        subs = topics[rng.integers(0, len(topics), max(1, n // 100))]
        subs += TOPIC_SPREAD * rng.standard_normal(subs.shape, dtype=np.float32)
        x = subs[rng.integers(0, len(subs), n)]
        x += SPREAD * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def single_latency(index, queries: np.ndarray, k: int = 5) -> tuple[float, float]:
    faiss.omp_set_num_threads(1)
    times = []
    for q in queries:
        with Timer() as t:
            index.search(q[None], k)
        times.append(t.seconds)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return pct(times, 50), pct(times, 99)


def bench_scale(n: int, d: int, data_kind: str, n_queries: int) -> None:
    rng = np.random.default_rng(0)
    with Timer() as t:
        both = synthetic(n + n_queries, d, data_kind, rng)
    x, queries = both[:n], both[n:]
    print(f"\n== scale: {n:,} x {d} {data_kind} unit vectors, {n_queries} held-out queries (made in {t.seconds:.1f} s)")
    rows = []
    for kind in ("flat", "ivf", "hnsw"):
        with Timer() as t:
            index, params = make_index(x, kind)
        build = t.seconds
        size = len(faiss.serialize_index(index))
        if kind == "flat":
            with Timer() as t:
                _, truth = index.search(queries, 5)
            batched = t.seconds / len(queries)
            p50, p99 = single_latency(index, queries[: min(200, n_queries)])
            rows.append((kind, "", size, build, p50, p99, batched, 1.0))
            continue
        sweep = (8, 16, DEFAULT_NPROBE, 64) if kind == "ivf" else (32, 64, DEFAULT_EF_SEARCH, 160)
        for value in sweep:
            if kind == "ivf":
                index.nprobe = value
                label = f"nlist {params['nlist']} nprobe {value}"
            else:
                index.hnsw.efSearch = value
                label = f"M {params['M']} efSearch {value}"
            with Timer() as t:
                _, got = index.search(queries, 5)
            batched = t.seconds / len(queries)
            p50, p99 = single_latency(index, queries)
            default = value == (DEFAULT_NPROBE if kind == "ivf" else DEFAULT_EF_SEARCH)
            rows.append((kind + (" *" if default else ""), label, size, build, p50, p99, batched,
                         recall_at(truth, got)))
    print(f"  {'kind':<7}{'parameters':<26}{'bytes':>14}{'build s':>9}{'single p50':>13}{'single p99':>13}"
          f"{'batched/q':>12}{'recall@5':>10}")
    for kind, label, size, build, p50, p99, batched, rec in rows:
        print(f"  {kind:<7}{label:<26}{size:>14,}{build:>9.1f}{ms(p50):>13}{ms(p99):>13}{ms(batched):>12}{rec:>10.3f}")
    print("  (* = the default; memory is the serialized index: vectors n*d*4 plus IVF centroids/ids or HNSW links)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", **bench_file())
    ap.add_argument("--queries-from", **bench_file("test.csv"))
    ap.add_argument("--n-embed", type=int, default=256, help="texts for the fp32/bf16 throughput comparison")
    ap.add_argument("--dtype", default="auto", help="dtype of the train build: auto (bf16 where native), "
                                                    "float32, bfloat16")
    ap.add_argument("--n-single", type=int, default=100, help="single questions timed in the train part")
    ap.add_argument("--n-batch", type=int, default=256, help="questions in the batched query")
    ap.add_argument("--scale", default="100000,1000000", help="comma-separated vector counts for the scale part")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--n-queries", type=int, default=1000)
    ap.add_argument("--synthetic", default="clustered", choices=("clustered", "uniform", "both"))
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; faiss {faiss.__version__}, GPUs seen by faiss: "
          f"{faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}")
    data = Path(args.data)
    if not args.skip_embed or not args.skip_train:
        if not data.is_file():
            print(f"{data}: not found; the embed and train parts are skipped")
            args.skip_embed = args.skip_train = True
    if not args.skip_embed:
        qs = labelled(data)
        rng = np.random.default_rng(0)
        bench_embed([embedding_text(qs[i]) for i in rng.choice(len(qs), min(args.n_embed, len(qs)), replace=False)])
    if not args.skip_train:
        dtype = pick_dtype(args.dtype)
        bench_train(data, Path(args.queries_from), dtype, args.n_single, args.n_batch)
    kinds = ("clustered", "uniform") if args.synthetic == "both" else (args.synthetic,)
    for n in [int(s) for s in args.scale.split(",") if s.strip()]:
        for kind in kinds:
            bench_scale(n, args.dim, kind, args.n_queries)
    print(f"\nsettings: nprobe {DEFAULT_NPROBE}, efSearch {DEFAULT_EF_SEARCH}; "
          f"nlist(100k) = {ivf_nlist(100_000)}, nlist(1M) = {ivf_nlist(1_000_000)}")


if __name__ == "__main__":
    main()
