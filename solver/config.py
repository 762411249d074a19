"""Configuration: pydantic models loaded from YAML; every field has a commented default.

An unknown key is an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from solver.types import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BackboneConfig(_Strict):
    """One LLM: what it is, and where it runs."""

    # A registered embedded name (see solver/models.py), a hub id, a local HF folder or a .gguf file.
    model: str = "smollm2-135m-instruct"
    # engine: in-process vLLM; server: an OpenAI-compatible vLLM server at base_url.
    kind: Literal["engine", "server"] = "engine"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable that holds the server's key, if any
    served_name: str | None = None  # the server's model id; default: model
    tokenizer: str | None = None  # default: the model's own
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    enforce_eager: bool = True  # CUDA graphs/compile cost ~50 s per start on CPU
    kv_cache_gb: float = 2.0  # CPU only: VLLM_CPU_KVCACHE_SPACE
    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 128
    concurrency: int = 32  # server: requests in flight at once
    timeout_s: float = 300.0  # server: per request
    seed: int = 0
    engine_args: dict = {}  # passed through to vllm.LLM / the server's flags


class AnswerConfig(_Strict):
    """The answer step (alone, it is the single-pass baseline)."""

    batch_size: int = 64  # questions per run batch and per journal write
    # Average the probabilities of the original and the reversed option order: small
    # models pick by position ("A") as much as by content.
    permute: bool = False


class GraphConfig(_Strict):
    """retrieve -> answer -> verify -> reanswer -> decide; off: the single-pass answer."""

    enabled: bool = False
    accept: float = 1.01  # top answer probability at or above which the answer is final (>1: never)
    max_rounds: int = 1  # re-answers per question


class VerifyConfig(_Strict):
    enabled: bool = False
    accept: float = 0.5  # P(TRUE) at or above which the answer is kept


class RetrieveConfig(_Strict):
    enabled: bool = False
    data: str = "../shared/codemmlu-b6/train.csv"  # solved questions; indexed once, cached
    split: str | None = "train"  # index only this hash split of `data` (None: all of it)
    index: str | None = None  # a prebuilt index folder instead of `data`
    duplicates: bool = True  # an exact copy's stored answer is final
    k: int = 3  # worked examples for the re-answer
    min_score: float = 0.5  # neighbours below this are never examples
    floor: float = 0.9  # re-answer with examples only when the best neighbour reaches this


class ReanswerConfig(_Strict):
    enabled: bool = False
    eliminate: bool = True  # drop the option that verification rejected
    weight: float = 0.5  # the re-answer's share of the final probabilities


class SolverConfig(_Strict):
    name: str = "baseline"
    backbone: BackboneConfig = BackboneConfig()
    answer: AnswerConfig = AnswerConfig()
    graph: GraphConfig = GraphConfig()
    verify: VerifyConfig = VerifyConfig()
    retrieve: RetrieveConfig = RetrieveConfig()
    reanswer: ReanswerConfig = ReanswerConfig()


class ConfigError(UserError):
    """A one-line complaint about a config file."""


def load_config(path: str | Path | None = None) -> SolverConfig:
    """Defaults when `path` is None; otherwise the YAML file, validated."""
    if path is None:
        return SolverConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.setdefault("name", path.stem)
    try:
        return SolverConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: field '{where}': {err['msg']}") from None
