"""Same answers every run: a config run twice, and a third time killed and resumed, must write
byte-identical CSVs; and what that costs in questions/s against another revision of the code.

Usage: python eval/bench_repeat.py --data QUESTIONS [--config configs/graph.yaml] [--orders 2]
                                   [--dtype auto] [--limit 500] [--kill-after 3]
                                   [--baseline REV] [--invariant] [--out .cache/bench-repeat]

Every run is `solver run` in a process of its own, on the same machine, from this folder (the
same index and sandbox caches). In this order, so that the timed runs alternate:
  run 1, [baseline run 1], run 2, [baseline run 2], [batch-invariant run], killed, resumed
`--baseline REV` runs the same config with the code of git revision REV (checked out into a
worktree): its two CSVs show whether that code repeated itself, and its q/s is the cost
reference. `--invariant` adds a run with `batch_invariant: true` on every backbone (one prompt
per engine step, no prefix cache). Speeds are the CLI's own (answering, not engine start).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

from backends.hardware import machine, pick_dtype  # noqa: E402
from core.config import load_config, read_yaml  # noqa: E402


def solver_cmd(code: Path, *args: str) -> list[str]:
    """`solver ...` with the package imported from `code` (this checkout or a worktree)."""
    boot = f"import sys; sys.path.insert(0, {str(code)!r}); from solver.cli import app; app()"
    return [sys.executable, "-c", boot, *args]


def run(code: Path, data: str, out: Path, cfg: Path, limit: int,
        kill_after: int | None = None) -> tuple[int, float | None]:
    """(exit status, q/s) of one `solver run`; a finished run leaves `out`. `kill_after`: this
    checkout's code, SIGKILLed once that many batches are journaled (tests/faulty.py)."""
    args = ["run", "-i", data, "-o", str(out), "-c", str(cfg), "--limit", str(limit), "-q"]
    cmd = solver_cmd(code, *args) if kill_after is None else \
        [sys.executable, str(ROOT / "tests" / "faulty.py"), f"{kill_after}:SIGKILL", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    m = re.search(r"new\s+at\s+([\d.]+)\s+q/s", proc.stdout)  # rich wraps long lines
    if proc.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"{out.name}: solver run failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return proc.returncode, float(m[1]) if m else None


def every_backbone(raw: dict, **fields) -> dict:
    """A copy of a config's YAML with `fields` set on each backbone."""
    raw = json.loads(json.dumps(raw))
    for b in raw.get("backbones") or [raw.setdefault("backbone", {})]:
        b.update(fields)
    return raw


def letters(path: Path) -> list[str]:
    return [line.split(",")[1] for line in path.read_text().splitlines()[1:]]


def fresh(path: Path) -> Path:
    for p in (path, path.with_name(path.name + ".journal.jsonl")):
        p.unlink(missing_ok=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="questions file (CSV, JSONL or parquet)")
    ap.add_argument("--config", default=str(ROOT / "configs/graph.yaml"))
    ap.add_argument("--orders", type=int, default=2, help="answer.orders (1: the config's)")
    ap.add_argument("--dtype", default="auto", help="every backbone's dtype: auto, float32, bfloat16")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--kill-after", type=int, default=3, help="batches journaled before the SIGKILL")
    ap.add_argument("--baseline", help="a git revision to run the same config with, for the cost")
    ap.add_argument("--invariant", action="store_true", help="also a run with batch_invariant: true")
    ap.add_argument("--out", default=str(ROOT / ".cache" / "bench-repeat"))
    args = ap.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw = read_yaml(Path(args.config))  # with what it includes
    raw.setdefault("answer", {})["orders"] = args.orders
    cfg, inv = out / "config.yaml", out / "invariant.yaml"
    cfg.write_text(yaml.safe_dump(every_backbone(raw, dtype=args.dtype)))
    inv.write_text(yaml.safe_dump(every_backbone(raw, dtype=args.dtype, batch_invariant=True)))
    config = load_config(cfg)  # also checks it
    dtypes = sorted({pick_dtype(b.dtype) for b in config.backbones})

    base = None
    if args.baseline:
        base = Path(tempfile.mkdtemp(prefix="bench-repeat-")) / "code"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
    speeds: dict[str, list[float]] = {}
    try:
        csv = {}
        for i in (1, 2):
            csv[f"run {i}"] = fresh(out / f"run{i}.csv")
            speeds.setdefault("this code", []).append(run(ROOT, args.data, csv[f"run {i}"], cfg, args.limit)[1])
            if base:
                csv[f"baseline {i}"] = fresh(out / f"base{i}.csv")
                speeds.setdefault(f"baseline {args.baseline}", []).append(run(base, args.data, csv[f"baseline {i}"],
                                                                              cfg, args.limit)[1])
        if args.invariant:
            csv["batch-invariant"] = fresh(out / "invariant.csv")
            speeds["batch_invariant: true"] = [run(ROOT, args.data, csv["batch-invariant"], inv, args.limit)[1]]
        csv["killed, resumed"] = fresh(out / "resumed.csv")
        rc, _ = run(ROOT, args.data, csv["killed, resumed"], cfg, args.limit, kill_after=args.kill_after)
        assert rc == -signal.SIGKILL and not csv["killed, resumed"].exists(), "the run ended before it was killed"
        run(ROOT, args.data, csv["killed, resumed"], cfg, args.limit)
    finally:
        if base:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)

    n = len(letters(csv["run 1"]))
    print(f"{n} questions of {args.data}, config {config.name} with answer.orders {args.orders}, "
          f"dtype {'/'.join(dtypes)}; {machine()}")
    same = {}
    for name, path in csv.items():
        against = "baseline 1" if name == "baseline 2" else "run 1"
        if name in ("run 1", "baseline 1"):
            continue
        same[name] = path.read_bytes() == csv[against].read_bytes()
        moved = sum(a != b for a, b in zip(letters(path), letters(csv[against])))
        print(f"  {name:>16} vs {against}: {'identical' if same[name] else f'DIFFERENT ({moved} of {n} letters)'}")
    for name, qps in speeds.items():
        print(f"  {name:>24}: {', '.join(f'{q:.2f}' for q in qps if q)} q/s")
    if base:
        mine, theirs = max(speeds["this code"]), max(speeds[f"baseline {args.baseline}"])
        print(f"this code / baseline, best of two each: {mine / theirs:.2f}x questions/s")
    (out / "summary.json").write_text(json.dumps({"speeds": speeds, "machine": machine(), "dtype": dtypes,
                                                  "identical": same}, indent=1))


if __name__ == "__main__":
    main()
