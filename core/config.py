"""Configuration: pydantic models loaded from YAML; every field has a commented default.

An unknown key is an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.types import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BackboneConfig(Strict):
    """One LLM: what it is, and where it runs."""

    # A registered name (solver models list), a hub id, a local HF folder or a .gguf file.
    model: str = "smollm2-135m-instruct"
    # engine: in-process vLLM; server: an OpenAI-compatible vLLM server at base_url, or,
    # without base_url, the one `solver serve` started for it. A list of URLs: replicas of
    # one server (the same model, dtype and flags on each); each question's prompts go to
    # one of them, by its task_id (README, "Several machines").
    backend: Literal["engine", "server"] = "engine"
    base_url: str | list[str] | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable that holds the server's key, if any
    served_name: str | None = None  # the server's model id; default: model
    tokenizer: str | None = None  # default: the model's own
    lora: str | None = None  # a peft LoRA adapter folder, applied by vLLM on top of `model`
    # Merge `lora` into `model` once (cached beside the models) and serve the plain result:
    # vLLM's LoRA path on a CPU answered ~8x slower than the base (eval/results/finetune/).
    merge_lora: bool = False
    # auto: bfloat16 where the hardware computes it (a GPU of capability >= 8.0, a CPU with
    # AVX512-BF16/AMX), float16 on older GPUs, float32 on other CPUs (bf16 emulated: ~5x slower)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = 4096
    enforce_eager: bool = True  # CUDA graphs/compile cost ~50 s per start on CPU
    kv_cache_gb: float | None = None  # CPU only: KV-cache GiB; None: 4 (fixed: never from free memory)
    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 128  # prompts the engine computes in one step
    # One prompt per engine step and no prefix cache: a prompt's probabilities are then the
    # same alone, in any batch and through a server that batches requests as they arrive,
    # in any dtype; costs throughput (README, "Same answers every run"). Off: the same input
    # and config still give the same answers, but in bf16 a prompt's numbers depend on the
    # prompts that share its call.
    batch_invariant: bool = False
    concurrency: int = 32  # server: requests in flight at once, per replica
    timeout_s: float = 300.0  # server: per request
    seed: int = 0
    engine_args: dict = {}  # passed through to vllm.LLM / the server's flags

    @model_validator(mode="after")
    def _some_replica(self):
        if self.base_url == []:
            raise ValueError("base_url: an empty list names no server")
        return self

    @property
    def label(self) -> str:
        """The one name a backbone goes by (votes, traces, errors, `solver serve`): its
        served_name, else the model's last path part, dots kept (a .gguf file without it)."""
        return self.served_name or self.model.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")


class AnswerConfig(Strict):
    """The answer step (alone, it is the single-pass baseline)."""

    batch_size: int = 64  # questions per run batch and per journal write
    # Option orders each backbone answers in, each mapped back and counted as a voter:
    # 1: as given; 2: and reversed; more: and seeded shuffles. Small models pick by
    # position ("A") as much as by content.
    orders: int = 1
    # Worked examples in every answer prompt: the question's nearest solved questions from
    # retrieve's index (at or above retrieve.min_score, nearest first; never the question
    # itself). An adapter trained with `retrieval: true` must answer with the same k.
    shots: int = Field(0, ge=0)


class GraphConfig(Strict):
    """retrieve -> answer -> verify -> reanswer -> decide; off: the answer step alone (`as_graph`)."""

    enabled: bool = False
    accept: float = 1.01  # top answer probability at or above which the answer is final (>1: never)
    max_rounds: int = 1  # re-answers per question


class VerifyConfig(Strict):
    enabled: bool = False
    accept: float = 0.5  # P(TRUE) at or above which the answer is kept


class RetrieveConfig(Strict):
    enabled: bool = False
    # Solved questions, indexed once and cached: the labelled file the user names with
    # `--labelled FILE` (core/config.py: with_labelled). None and no `index`: no retrieval.
    data: str | None = None
    split: str | None = None  # index only this hash split of `data` (None: all of it)
    index: str | None = None  # a prebuilt index folder instead of `data`
    duplicates: bool = True  # an exact copy's stored answer is final
    k: int = 3  # worked examples for the re-answer
    min_score: float = 0.5  # neighbours below this are never examples
    floor: float = 0.9  # re-answer with examples only when the best neighbour reaches this


class ExecuteConfig(Strict):
    """Run the code in a question in the sandbox (execution/), before any LLM call."""

    enabled: bool = False
    # bwrap: execution/sandbox.py, and no run at all where it is missing (one warning).
    # none: runs code from the input file with rlimits only, as this user: UNSAFE.
    sandbox: Literal["bwrap", "none"] = "bwrap"
    # Evidence that settles a question alone when it leaves one option (eval/bench_execute.py
    # measures each on dev): output (the run's output matches one option), error (the run
    # failed and one option names an error), examples (one option's body passes the
    # docstring's examples), compile (the program of a behaviour question did not compile,
    # and one option names a compile error).
    trust: list[Literal["output", "error", "examples", "compile"]] = ["output", "examples", "compile"]
    # Evidence whose ruled-out options are removed from the answer's probabilities when it
    # leaves more than one (a behaviour question's program compiled: not "Compile Error").
    rule_out: list[Literal["output", "error", "examples", "compile"]] = ["examples", "compile"]
    timeout_s: float = 5.0  # wall time per run (compiling has its own budget)
    # A run's memory: all its processes together, in a cgroup of its own where the machine
    # allows (root, cgroup v1), and each process's rlimit; a run that reaches it is killed
    # (execution/sandbox.py). Compiling has its own budget.
    memory_mb: int = Field(512, ge=16)
    # The compiler's budget (javac, g++, rustc, ...), not the program's: a compiler that runs
    # out of it gives no verdict on the code (neither compiles nor compile_error).
    compile_timeout_s: float = 30.0
    compile_memory_mb: int = Field(1024, ge=16)
    workers: int = Field(2, ge=1)  # runs at once: workers x the larger budget must fit beside the engine


class ReanswerConfig(Strict):
    enabled: bool = False
    drop_rejected: bool = True  # drop the option that verification rejected
    weight: float = 0.5  # the re-answer's share of the final probabilities


class DebiasConfig(Strict):
    """PriDe (graphs/vote.py): each backbone's prior over option positions, estimated from
    questions answered in every cyclic order, divided out of every answer of that backbone."""

    # none; run: a seeded share of the run's own questions (no labels needed); file: the
    # questions of `data` (its `split`), e.g. a labelled file's dev split
    source: Literal["none", "run", "file"] = "none"
    share: float = Field(0.05, ge=0, le=1)  # of the questions, answered in every cyclic order ...
    at_least: int = Field(20, ge=1)  # ... but at least this many
    seed: int = 0
    data: str | None = None  # source file: the questions
    split: str | None = "dev"  # ... only this hash split of them

    @model_validator(mode="after")
    def _file_has_data(self):
        if self.source == "file" and not self.data:
            raise ValueError("source: file needs data (the questions to estimate the priors on)")
        return self


class VoteConfig(Strict):
    """How the answers of every (backbone, option order) voter are combined."""

    # mean: average probability; majority: one vote per voter's top letter (the mean
    # breaks ties); weighted: Dawid-Skene, each voter's per-option confusion estimated by
    # EM over the batch's answers, or from `labelled` when given; pool: log-linear pool,
    # P(option) proportional to the product of each backbone's probability to the power of
    # its weight (`weights`, or fitted on `labelled` by maximum likelihood).
    rule: Literal["mean", "majority", "weighted", "pool"] = "mean"
    weights: dict[str, float] = {}  # pool: backbone label -> weight (missing: 1)
    debias: DebiasConfig = DebiasConfig()
    labelled: str | None = None  # weighted, pool: a labelled file to estimate confusions or weights on ...
    labelled_split: str | None = "dev"  # ... only this hash split of it
    labelled_n: int = 300  # ... at most this many of its questions


class DecideConfig(Strict):
    """The final letter: by the rules (duplicate, trusted run, the vote, verify, re-answer;
    graphs/routing.py), or, with `fitted`, by a ranker fitted on labelled data (`solver fit`,
    graphs/ranker.py) over every option's evidence (graphs/features.py)."""

    fitted: str | None = None  # the folder `solver fit --out` wrote; None: the rules decide
    # Feature groups a fit reads (graphs/features.py: kind, model, execution, retrieval, text,
    # prior, shape). `text` and `prior` read how the benchmark was built, not code: leave them
    # out to measure the model and not the benchmark. A fitted ranker must name the same.
    features: list[Literal["kind", "model", "execution", "retrieval", "text", "prior", "shape"]] = [
        "kind", "model", "execution", "retrieval", "text", "prior", "shape"]
    k: int = Field(8, ge=0)  # solved neighbours (any similarity, copies included) the retrieval features read
    # Settle without the LLM: the LLM-free fit's top option, when its probability reaches the
    # threshold the fit chose for that kind of question (out-of-fold precision >= 0.98).
    settle: bool = True


class SolverConfig(Strict):
    name: str = "baseline"
    # The voters' backbones; the first also verifies and re-answers. `backbone: {...}` is
    # shorthand for a list of one.
    backbones: list[BackboneConfig] = [BackboneConfig()]
    answer: AnswerConfig = AnswerConfig()
    graph: GraphConfig = GraphConfig()
    verify: VerifyConfig = VerifyConfig()
    retrieve: RetrieveConfig = RetrieveConfig()
    reanswer: ReanswerConfig = ReanswerConfig()
    vote: VoteConfig = VoteConfig()
    execute: ExecuteConfig = ExecuteConfig()
    decide: DecideConfig = DecideConfig()

    @model_validator(mode="before")
    @classmethod
    def _one_backbone(cls, raw):
        if isinstance(raw, dict) and "backbone" in raw:
            if "backbones" in raw:
                raise ValueError("give 'backbone' or 'backbones', not both")
            raw = {k: v for k, v in raw.items() if k != "backbone"} | {"backbones": [raw["backbone"]]}
        return raw

    @model_validator(mode="after")
    def _voters(self):
        labels = [b.label for b in self.backbones]
        if not labels:
            raise ValueError("'backbones' lists no backbone")
        if len(set(labels)) < len(labels):
            raise ValueError(f"backbones need distinct names (served_name): {labels}")
        if (len(labels) > 1 or self.answer.orders > 1) and not self.graph.enabled:
            raise ValueError("several backbones or answer.orders > 1 vote, which needs graph.enabled")
        if self.answer.orders < 1:
            raise ValueError("answer.orders must be at least 1")
        if self.decide.fitted and not (self.graph.enabled and self.retrieve.enabled):
            raise ValueError("decide.fitted reads the labelled questions retrieve indexes: it needs graph.enabled and "
                             "retrieve.enabled")
        if self.answer.shots and not (self.graph.enabled and self.retrieve.enabled):
            raise ValueError("answer.shots takes its examples from retrieve, which needs graph.enabled and "
                             "retrieve.enabled")
        if self.vote.rule == "pool" and not self.vote.labelled and all(self.vote.weights.get(x, 1.0) == 0
                                                                       for x in labels):
            raise ValueError(f"vote.weights: every backbone's pool weight is 0 ({', '.join(labels)}): the pooled "
                             "probabilities would be uniform and every answer the first option")
        return self

    @property
    def backbone(self) -> BackboneConfig:
        """The first backbone: the single pass's, and the one that verifies and re-answers."""
        return self.backbones[0]

    def with_backbones(self, *backbones: BackboneConfig) -> "SolverConfig":
        return self.model_copy(update={"backbones": list(backbones)})


def votes_only(cfg: SolverConfig) -> SolverConfig:
    """`cfg` with no step but the voters' answers and their `mean`: nothing retrieved or
    run before, nothing verified or re-answered after. What calibration measures voters on."""
    off = {"enabled": False}
    return cfg.model_copy(update={
        "retrieve": cfg.retrieve.model_copy(update=off), "execute": cfg.execute.model_copy(update=off),
        "verify": cfg.verify.model_copy(update=off), "reanswer": cfg.reanswer.model_copy(update=off),
        "vote": cfg.vote.model_copy(update={"rule": "mean"})})


def as_graph(cfg: SolverConfig) -> SolverConfig:
    """The config the graph runs. With `graph.enabled`, `cfg`; without it, the single pass
    as the graph with every step but `answer` off: the first backbone reads the options as
    given and its reply is the answer (one voter, the `mean` of one, no position prior).
    So the single pass, the ablation's baseline row and the graph run the same code."""
    if cfg.graph.enabled:
        return cfg
    plain = votes_only(cfg)
    return plain.model_copy(update={
        "backbones": [cfg.backbone], "answer": cfg.answer.model_copy(update={"orders": 1, "shots": 0}),
        "vote": plain.vote.model_copy(update={"debias": DebiasConfig()})})


class ConfigError(UserError):
    """A one-line complaint about a config file."""


def merged(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge key by key, anything else (a list, a value) is
    replaced; `backbone` and `backbones` name one thing, so either replaces both."""
    if {"backbone", "backbones"} & over.keys():
        base = {k: v for k, v in base.items() if k not in ("backbone", "backbones")}
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


# Keys renamed so that one name means one thing; a config file may still use the old name.
OLD_NAMES = {"backbone": {"kind": "backend"}, "execute": {"eliminate": "rule_out"},
             "reanswer": {"eliminate": "drop_rejected"}}


def renamed(raw: dict, path: Path) -> dict:
    """`raw` with each old key under its new name (both in one block: one line naming the file)."""
    blocks = [(s, raw.get(s)) for s in OLD_NAMES] + [("backbone", b) for b in raw.get("backbones") or []]
    for section, block in blocks:
        for old, new in OLD_NAMES[section].items():
            if isinstance(block, dict) and old in block:
                if new in block:
                    raise ConfigError(f"{path}: field '{section}.{old}': the old name of '{new}', and both are given")
                block[new] = block.pop(old)
    return raw


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping, on top of the files its `include:` names (one or a list, paths
    relative to it, later ones winning), so a config states only what differs from its base."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = renamed(raw, path)
    includes = raw.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(n, str) for n in includes):
        raise ConfigError(f"{path}: field 'include': a config file or a list of them")
    base: dict = {}
    for name in includes:
        part = path.parent / name
        if not part.is_file() or part.resolve() in (*seen, path.resolve()):
            raise ConfigError(f"{path}: include '{name}': "
                              f"{'includes itself' if part.is_file() else 'no such config file'}")
        part_raw = read_yaml(part, (*seen, path.resolve()))
        base = merged(base, {k: v for k, v in part_raw.items() if k != "name"})  # a config is named by its own file
    return merged(base, raw)


def load_config(path: str | Path | None = None, model: type[BaseModel] = SolverConfig):
    """Defaults when `path` is None; otherwise the YAML file (with what it includes), validated as `model`."""
    if path is None:
        return model()
    path = Path(path)
    raw = read_yaml(path)
    if "name" in model.model_fields:
        raw.setdefault("name", path.stem)
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = list(err["loc"])
        if "backbone" in raw and loc[:2] == ["backbones", 0]:  # name the key the file used
            loc = ["backbone", *loc[2:]]
        where = ".".join(str(p) for p in loc)
        raise ConfigError(f"{path}: field '{where}': {err['msg']}" if where else f"{path}: {err['msg']}") from None


def with_labelled(cfg: SolverConfig, labelled: str | Path | None,
                  held_out: bool = False) -> tuple[SolverConfig, str | None]:
    """(the config with `labelled` as retrieve's solved questions, a note for the user or None).

    `held_out`: the questions answered are a hash split (dev, test) of that same file, so
    only its split `train` is indexed: never a question scored, nor its neighbours in dev.
    Without any labelled file a config that retrieves answers without retrieval, worked
    examples or the solved-copy shortcut, and the note says so.
    """
    r = cfg.retrieve.model_copy(update=({"data": str(labelled)} if labelled is not None else {})
                                | ({"split": "train"} if held_out else {}))
    if not (cfg.graph.enabled and r.enabled) or r.data or r.index:
        return cfg.model_copy(update={"retrieve": r}), None
    off = cfg.model_copy(update={"retrieve": r.model_copy(update={"enabled": False}),
                                 "answer": cfg.answer.model_copy(update={"shots": 0}),
                                 "decide": cfg.decide.model_copy(update={"fitted": None})})
    fitted = ", and the rules decide, not its fitted decision (which reads them)" if cfg.decide.fitted else ""
    return off, (f"config '{cfg.name}' retrieves solved questions, but no labelled file was named (--labelled FILE): "
                 f"answering without retrieval and without the solved-copy shortcut{fitted}")
