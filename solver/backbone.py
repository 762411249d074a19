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
import math
import os
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

from solver.config import BackboneConfig
from solver.models import resolve_model

MAX_LOGPROBS = 32  # at least 26 letters; what the engine is started to allow


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


class Backbone(ABC):
    """Three things: a name, a tokenizer with its context length, and `choose`."""

    def __init__(self, cfg: BackboneConfig):
        self.cfg = cfg
        self.name = cfg.served_name or cfg.model
        self.max_model_len = cfg.max_model_len
        self._decoded: dict[int, str] = {}

    @property
    @abstractmethod
    def tokenizer(self): ...

    def decode(self, token_id: int) -> str:
        if token_id not in self._decoded:
            self._decoded[token_id] = self.tokenizer.decode([token_id])
        return self._decoded[token_id]

    @abstractmethod
    def choose(self, prompts: list[str], options: list[list[str]]) -> list[dict[str, float] | None]:
        """For each prompt, a probability per allowed option (None: unreadable)."""

    def close(self) -> None:
        pass


class EngineBackbone(Backbone):
    """The in-process vLLM engine: one `generate` call per batch."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__(cfg)
        if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(max(1, cfg.kv_cache_gb)))
        from vllm import LLM

        path = resolve_model(cfg.model)
        args = dict(
            model=path,
            tokenizer=resolve_model(cfg.tokenizer) if cfg.tokenizer else path,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            max_logprobs=MAX_LOGPROBS,
            max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
        )
        self.llm = LLM(**(args | cfg.engine_args))

    @cached_property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def choose(self, prompts, options):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [
            SamplingParams(
                max_tokens=1,
                temperature=0.0,
                logprobs=MAX_LOGPROBS,
                structured_outputs=StructuredOutputsParams(choice=opts),
            )
            for opts in options
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for out, opts in zip(outputs, options):
            lp = out.outputs[0].logprobs
            top = {t: v.logprob for t, v in lp[0].items()} if lp else {}
            result.append(option_probabilities(top, opts, self.decode))
        return result

    def close(self):
        del self.llm


class ServerBackbone(Backbone):
    """An OpenAI-compatible vLLM server: the batch goes out as concurrent requests."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__(cfg)
        if not cfg.base_url:
            raise BackboneError(f"backbone '{self.name}': kind 'server' needs base_url")
        self.base_url = cfg.base_url
        self.api_key = os.environ.get(cfg.api_key_env) or "EMPTY"

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model(self.cfg.tokenizer or self.cfg.model))

    async def _one(self, client, sem, prompt, opts):
        async with sem:
            resp = await client.completions.create(
                model=self.name,
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

    async def _all(self, prompts, options):
        import openai

        sem = asyncio.Semaphore(self.cfg.concurrency)
        async with openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, timeout=self.cfg.timeout_s, max_retries=1
        ) as client:
            try:
                return await asyncio.gather(*(self._one(client, sem, p, o) for p, o in zip(prompts, options)))
            except openai.OpenAIError as e:
                raise BackboneError(f"backbone '{self.name}' at {self.base_url}: {type(e).__name__}: {e}") from None

    def choose(self, prompts, options):
        return asyncio.run(self._all(prompts, options))


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

    def choose(self, prompts, options):
        keys = [self.key(p, o) for p, o in zip(prompts, options)]
        new = {}  # each unseen prompt once, in order
        for k, p, o in zip(keys, prompts, options):
            if k not in self.store:
                new.setdefault(k, (p, o))
        if new:
            got = self.inner.choose([p for p, _ in new.values()], [o for _, o in new.values()])
            with self.path.open("a") as f:
                for k, probs in zip(new, got):
                    self.store[k] = probs
                    f.write(json.dumps({"key": k, "probs": probs}) + "\n")
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        return [self.store[k] for k in keys]

    def close(self):
        self.inner.close()


def make_backbone(cfg: BackboneConfig) -> Backbone:
    return {"engine": EngineBackbone, "server": ServerBackbone}[cfg.kind](cfg)
