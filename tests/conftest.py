"""Shared fixtures: the real vLLM engine and a real vLLM server, each started once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "solver" / "samples" / "questions.jsonl"
SHARED = ROOT.parent / "shared" / "codemmlu-b6"
SMALL = dict(max_model_len=2048, kv_cache_gb=1)
# How far two computations of one probability may differ when they are not the same
# computation (a prompt in a batch against the same prompt alone; the engine against a
# server that batches its own way): a logit of magnitude ~20 rounded to a dtype's
# significand moves by 20 * 2^-bits per rounding; allowed: two roundings. bf16 keeps 8
# bits (0.08 a rounding; SmolLM2-135M measured up to 0.077 on 64 prompts), float16 11,
# float32 24 (allowed far more than two roundings: 1e-3).
PROB_TOL = {"bfloat16": 0.15, "float16": 0.02, "float32": 1e-3}


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "train.csv").is_file():
        pytest.skip("../shared/codemmlu-b6 is not beside this checkout")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from solver.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def engine_solver():
    from solver.api import Solver
    from solver.config import SolverConfig

    solver = Solver(SolverConfig.model_validate({"backbone": SMALL}))
    yield solver
    solver.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A real vLLM server on 127.0.0.1 serving the embedded model, batch-invariant (one
    prompt per step, no prefix cache); yields its base_url."""
    from solver.config import BackboneConfig
    from solver.server import start_server, stop_server

    log = (tmp_path_factory.mktemp("server") / "vllm.log").open("w")
    proc, url = start_server(BackboneConfig(**SMALL, batch_invariant=True), log=log)
    yield url
    stop_server(proc)
    log.close()
