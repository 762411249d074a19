"""Backbones: one interface, two implementations (in-process vLLM engine, vLLM server).

A backbone scores a batch of prompts over each prompt's own allowed continuations
(option letters, or TRUE/FALSE) and returns probabilities. The continuation is forced
with vLLM structured outputs (`choice`), so the sampled token is always valid, and
the probabilities come from the logprobs of that first token; nothing is parsed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

from backends.hardware import (
    available_gb,
    cpu_engine_env,
    cpu_has_bf16,
    cuda_capability,
    environ,
    kv_cache_gb,
    library_defaults,
    pick_dtype,
)
from backends.models import adapter_config, locate_model, merged_model, resolve_adapter, resolve_model
from core.config import BackboneConfig

log = logging.getLogger(__name__)  # warnings the user can act on: the CLI shows them (solver/console.py)
MAX_LOGPROBS = 32  # at least 26 letters; what the engine is started to allow


def run_coroutine(coro):
    """`asyncio.run(coro)`, also where an event loop already runs in this thread (a notebook
    kernel's): then in a thread of its own, with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class BackboneError(RuntimeError):
    """A backbone that failed (a dead server, a timeout): reported by its name."""


def option_probabilities(top: dict[int, float], options: list[str], decode) -> dict[str, float] | None:
    """Turn first-token logprobs into a distribution over `options`.

    Each returned token counts for the one option it starts ("T" and "TR" both for
    "TRUE"); a token that starts several options, or none, counts for none. None when
    no option got any mass: the reply could not be read.
    """
    mass = dict.fromkeys(options, 0.0)
    for token_id, logprob in top.items():
        text = decode(token_id).strip()
        owners = [o for o in options if text and o.startswith(text)]
        if len(owners) == 1 and logprob > -math.inf:
            mass[owners[0]] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return None
    return {o: m / total for o, m in mass.items()}


def run_dtype(cfg: BackboneConfig) -> str:
    """The dtype `cfg` answers in: this machine's choice, except on a server elsewhere (base_url,
    one or several replicas), which chose its own."""
    return cfg.dtype if cfg.backend == "server" and cfg.base_url else pick_dtype(cfg.dtype)


def engine_dtype(cfg: BackboneConfig) -> str:
    """The dtype a local engine runs `cfg` in; a config that forces bf16 on a CPU that only
    emulates it gets a warning the user can act on."""
    dtype = run_dtype(cfg)
    if dtype == "bfloat16" and cuda_capability() is None and not cpu_has_bf16():
        log.warning(f"backbone '{cfg.label}' runs in bfloat16, which this CPU emulates (no AVX512-BF16/AMX): "
             "3-6x slower than float32; set dtype: auto")
    return dtype


def engine_limits(cfg: BackboneConfig) -> dict:
    """What decides how an engine schedules a call, for the in-process engine and the
    server alike, fixed by the config (vLLM's defaults differ between the two, and its CPU
    KV cache was sized from free memory): in bf16 the steps a prompt is computed in, and
    with which other prompts, change its numbers. A prompt is never split over steps."""
    kv, free = kv_cache_gb(cfg.kv_cache_gb), available_gb()
    if cuda_capability() is None and kv > free:
        log.warning(f"backbone '{cfg.label}': KV cache of {kv} GiB, but only {free:.1f} GiB of memory is free; "
             "set kv_cache_gb lower")
    return dict(max_num_seqs=1 if cfg.batch_invariant else cfg.max_num_seqs,
                max_num_batched_tokens=max(cfg.max_model_len, 4096),
                enable_prefix_caching=not cfg.batch_invariant)


def replica_of(key: str, n: int) -> int:
    """Which of `n` replicas serves the prompts keyed `key` (a question's task_id): a function
    of the key alone, never of load or timing, so a rerun asks each question of the same one."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % n


def model_and_adapter(cfg: BackboneConfig) -> tuple[str, str | None]:
    """(the model vLLM loads, the adapter it applies or None): with `merge_lora`, the
    adapter merged into the model once (backends.models.merged_model) and none applied."""
    path = resolve_model(cfg.model)
    adapter = resolve_adapter(cfg.lora) if cfg.lora else None
    if adapter and cfg.merge_lora:
        return merged_model(path, adapter), None
    return path, adapter


def lora_rank(adapter: str) -> int:
    """The rank vLLM must be started for: the adapter's, rounded up to one vLLM supports."""
    r = adapter_config(adapter)["r"]
    return next(x for x in (8, 16, 32, 64, 128, 256, 320, 512) if x >= r)


class Backbone(ABC):
    """Three things: a label, a tokenizer with its context length, and `choose`."""

    def __init__(self, cfg: BackboneConfig):
        self.cfg = cfg
        self.label = cfg.label  # the one name votes, traces and errors use
        self.model_id = cfg.served_name or cfg.model  # what a server is asked for
        self.max_model_len = cfg.max_model_len
        self.dtype = run_dtype(cfg)
        self._decoded: dict[int, str] = {}

    @property
    @abstractmethod
    def tokenizer(self): ...

    def decode(self, token_id: int) -> str:
        if token_id not in self._decoded:
            self._decoded[token_id] = self.tokenizer.decode([token_id])
        return self._decoded[token_id]

    @abstractmethod
    def choose(self, prompts: list[str], options: list[list[str]],
               keys: list[str] | None = None) -> list[dict[str, float] | None]:
        """For each prompt, a probability per allowed option (None: unreadable). `keys`: per
        prompt, its question's task_id, which replicated servers route by (None: the prompt)."""

    async def achoose(self, prompts: list[str], options: list[list[str]],
                      keys: list[str] | None = None) -> list[dict[str, float] | None]:
        """`choose` for the graph's event loop; a served backbone's calls overlap with others'."""
        return self.choose(prompts, options, keys)

    def close(self) -> None:
        pass


class EngineBackbone(Backbone):
    """The in-process vLLM engine: one `generate` call per batch.

    A call's answers depend on its prompts alone, never on their order, on earlier calls or
    on timing: the prompts go in sorted (which also puts those that share a prefix side by
    side); the prefix cache starts empty (a prompt whose start another call computed gets
    other bf16 numbers than one computed whole); and the reply is read from the logprobs of
    the tokens that start an option (`logprob_token_ids`), not through a structured-output
    grammar, whose compilation runs in a thread and so decides by timing which prompts the
    engine's first step holds. The probabilities are those a choice grammar gives (the mass
    of the tokens it allows, renormalised). With the batcher's calls a pure function of the
    run's batch (graphs/batcher.py), a run, a rerun and a resumed run write the same letters.
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__(cfg)
        self.dtype = engine_dtype(cfg)
        library_defaults()  # the engine core in this process, whoever made this backbone
        from vllm import LLM

        path, adapter = model_and_adapter(cfg)
        self.lora_request = None
        lora = {}
        if adapter:
            from vllm.lora.request import LoRARequest

            lora = dict(enable_lora=True, max_lora_rank=lora_rank(adapter))
            self.lora_request = LoRARequest(self.label, 1, str(Path(adapter).resolve()))
        args = lora | dict(
            model=path,
            tokenizer=resolve_model(cfg.tokenizer) if cfg.tokenizer else path,
            dtype=self.dtype,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            max_logprobs=MAX_LOGPROBS,
            seed=cfg.seed,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
        ) | engine_limits(cfg)
        # vLLM reads these while the engine starts; the next engine gets its own
        with environ({} if cuda_capability() else cpu_engine_env(cfg.kv_cache_gb)):
            self.llm = LLM(**(args | cfg.engine_args))
        self._starts: dict[tuple[str, ...], list[int]] = {}

    @cached_property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    @cached_property
    def _ids_by_text(self) -> dict[str, list[int]]:
        by_text: dict[str, list[int]] = {}
        for i in range(len(self.tokenizer)):
            by_text.setdefault(self.decode(i), []).append(i)
        return by_text

    def option_tokens(self, options: list[str]) -> list[int]:
        """The tokens a reply may start with: those whose text begins an option (what a
        choice grammar allows), e.g. "A" for option A, "T", "TR", "TRUE" for TRUE."""
        key = tuple(options)
        if key not in self._starts:
            prefixes = {o[:n] for o in options for n in range(1, len(o) + 1)}
            self._starts[key] = sorted(i for p in prefixes for i in self._ids_by_text.get(p, []))
        return self._starts[key]

    def choose(self, prompts, options, keys=None):
        from vllm import SamplingParams

        order = sorted(range(len(prompts)), key=lambda i: (prompts[i], options[i]))
        starts = [self.option_tokens(o) for o in options]
        params = [SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=starts[i]) for i in order]
        if not self.cfg.batch_invariant:
            self.llm.reset_prefix_cache()
        outputs = self.llm.generate([prompts[i] for i in order], params, use_tqdm=False, lora_request=self.lora_request)
        result: list = [None] * len(prompts)
        for i, out in zip(order, outputs):
            lp, wanted = out.outputs[0].logprobs, set(starts[i])
            top = {t: v.logprob for t, v in lp[0].items() if t in wanted} if lp else {}  # not the sampled token
            result[i] = option_probabilities(top, options[i], self.decode)
        return result

    def close(self):
        del self.llm


class ServerBackbone(Backbone):
    """An OpenAI-compatible vLLM server, or several replicas of it: the batch goes out as
    concurrent requests, every prompt of one question to one replica (`replica_of`)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__(cfg)
        urls = cfg.base_url or self._served_url(cfg)
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.sent = [0] * len(self.urls)  # prompts sent to each replica: how the load spread
        self.api_key = os.environ.get(cfg.api_key_env) or "EMPTY"

    @staticmethod
    def _served_url(cfg: BackboneConfig) -> str:
        """No base_url: the server `solver serve` started for this backbone."""
        from backends.served import registry_dir, served

        entry = served(cfg.label)
        if entry is None:
            raise BackboneError(f"backbone '{cfg.label}': backend 'server' without base_url, and no live server "
                                f"for it in {registry_dir()} (start one: solver serve --config CONFIG)")
        return entry["base_url"]

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model(self.cfg.tokenizer or self.cfg.model))

    async def _one(self, client, sem, prompt, opts):
        async with sem:
            resp = await client.completions.create(
                model=self.model_id,
                prompt=prompt,
                max_tokens=1,
                temperature=0.0,
                logprobs=MAX_LOGPROBS,
                extra_body={
                    "structured_outputs": {"choice": opts},
                    "return_tokens_as_token_ids": True,
                },
            )
        lp = resp.choices[0].logprobs
        top = lp.top_logprobs[0] if lp and lp.top_logprobs else {}
        top = {int(k.removeprefix("token_id:")): v for k, v in top.items()}
        return option_probabilities(top, opts, self.decode)

    async def _replica(self, url, prompts, options):
        """One replica's share of a call, at most `concurrency` requests in flight."""
        import openai

        sem = asyncio.Semaphore(self.cfg.concurrency)
        async with openai.AsyncOpenAI(
            base_url=url, api_key=self.api_key, timeout=self.cfg.timeout_s, max_retries=1
        ) as client:
            try:
                return await asyncio.gather(*(self._one(client, sem, p, o) for p, o in zip(prompts, options)))
            except openai.OpenAIError as e:
                raise BackboneError(f"backbone '{self.label}' at {url}: {type(e).__name__}: {e}") from None

    async def achoose(self, prompts, options, keys=None):
        """Each replica's share at once; the replies in the prompts' order."""
        where = [replica_of(k, len(self.urls)) for k in keys or prompts]
        shares = {r: [i for i, w in enumerate(where) if w == r] for r in sorted(set(where))}
        for r, share in shares.items():
            self.sent[r] += len(share)
        asks = [self._replica(self.urls[r], [prompts[i] for i in share], [options[i] for i in share])
                for r, share in shares.items()]
        got = await asyncio.gather(*asks)
        result: list = [None] * len(prompts)
        for share, replies in zip(shares.values(), got):
            for i, reply in zip(share, replies):
                result[i] = reply
        return result

    def choose(self, prompts, options, keys=None):
        return run_coroutine(self.achoose(prompts, options, keys))


class CachedBackbone(Backbone):
    """A backbone that answers a prompt it has already seen from a JSONL file.

    At temperature 0 the same prompt gets the same answer, and tuning and ablations ask
    the same prompts under many configs: each is sent to the model once. Not for timing.
    """

    def __init__(self, inner: Backbone, path):
        super().__init__(inner.cfg)
        self.inner, self.path = inner, Path(path)
        self.max_model_len = inner.max_model_len
        self.store: dict[str, dict | None] = {}
        self.hits = self.misses = 0
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.endswith("}"):  # a line torn by a kill is skipped
                    row = json.loads(line)
                    self.store[row["key"]] = row["probs"]
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tokenizer(self):
        return self.inner.tokenizer

    @staticmethod
    def key(prompt: str, options: list[str]) -> str:
        return hashlib.sha256(json.dumps([prompt, options]).encode()).hexdigest()

    def _unseen(self, prompts, options, keys) -> tuple[list[str], dict]:
        hashes = [self.key(p, o) for p, o in zip(prompts, options)]
        new = {}  # each unseen prompt once, in order, with its routing key
        for h, p, o, k in zip(hashes, prompts, options, keys or prompts):
            if h not in self.store:
                new.setdefault(h, (p, o, k))
        self.misses += len(new)
        self.hits += len(hashes) - len(new)
        return hashes, new

    @staticmethod
    def _asked(new: dict) -> tuple[list, list, list]:
        """The unseen prompts as the inner backbone's (prompts, options, keys)."""
        return [p for p, _, _ in new.values()], [o for _, o, _ in new.values()], [k for _, _, k in new.values()]

    def _keep(self, keys, new, got):
        with self.path.open("a") as f:
            for k, probs in zip(new, got):
                self.store[k] = probs
                f.write(json.dumps({"key": k, "probs": probs}) + "\n")
        return [self.store[k] for k in keys]

    def choose(self, prompts, options, keys=None):
        hashes, new = self._unseen(prompts, options, keys)
        got = self.inner.choose(*self._asked(new)) if new else []
        return self._keep(hashes, new, got)

    async def achoose(self, prompts, options, keys=None):
        hashes, new = self._unseen(prompts, options, keys)
        got = await self.inner.achoose(*self._asked(new)) if new else []
        return self._keep(hashes, new, got)

    def close(self):
        self.inner.close()


def check_backbone(cfg: BackboneConfig) -> None:
    """What can be known of a backbone before anything starts: its model (and adapter and
    tokenizer) here, or its server answering; one line (ModelError, BackboneError) if not."""
    locate_model(cfg.tokenizer or cfg.model)  # a server's prompts are tokenized here too
    if cfg.backend == "engine":
        locate_model(cfg.model)
        if cfg.lora:
            resolve_adapter(cfg.lora)
        return
    import openai

    key = os.environ.get(cfg.api_key_env) or "EMPTY"
    for url in [cfg.base_url] if isinstance(cfg.base_url, str) else cfg.base_url or [ServerBackbone._served_url(cfg)]:
        try:
            with openai.OpenAI(base_url=url, api_key=key, timeout=min(cfg.timeout_s, 10), max_retries=0) as client:
                client.models.list()
        except openai.OpenAIError as e:
            raise BackboneError(f"backbone '{cfg.label}': no server answers at {url} ({type(e).__name__}); "
                                "start it first (solver serve --config CONFIG)") from None


def make_backbone(cfg: BackboneConfig) -> Backbone:
    return {"engine": EngineBackbone, "server": ServerBackbone}[cfg.backend](cfg)
