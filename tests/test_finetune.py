"""LoRA finetuning: the real embedded SmolLM2-135M and the shipped sample questions, tiny runs.

Prompts are kept short (max_len cuts the question text) and runs to a few steps: the
machine that runs these is small and shared.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from backends.models import resolve_model
from core.config import ConfigError, load_config
from core.data import DataError, load_questions, split_of
from core.prompts import answer_prompt
from core.types import UserError
from finetune.activations import ActivationCache
from finetune.config import FinetuneConfig
from finetune.data import build_examples, letter_token_ids
from finetune.train import Collate, answer_loss, finetune, items, load_for_training
from tests.helpers import SAMPLE

pytestmark = pytest.mark.slow  # trains, and starts vLLM engines and servers

# A tiny run on the sample: 2 training questions in one step, validated on the 3 dev questions.
TINY = dict(dtype="float32", rank=4, max_len=160, batch_size=2, n_train=2, epochs=1, val_n=3, eval_every=1, warmup=0.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches: two threads wait on each other more than they work (6 min against 40 s here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def own_activation_cache(cache):
    """Each test's activation cache starts empty (the run's summary counts what it computed):
    its own cache root (conftest.py), the models shared."""


@pytest.fixture(scope="module")
def questions():
    return load_questions(SAMPLE, labelled=True).questions


def shortest(examples, n):
    return sorted(examples, key=lambda e: len(e.prompt))[:n]


def fresh_model(dtype="float32", **cfg):
    """(model with a fresh adapter, first trained layer, cached layer)."""
    cfg = FinetuneConfig(dtype=dtype, **cfg)
    return load_for_training(resolve_model(cfg.model), cfg, "cpu", getattr(torch, dtype))[1:]


def test_the_example_is_the_solvers_prompt_and_its_answer_letter(tokenizer, questions):
    examples, too_long = build_examples(questions, tokenizer, 1024)
    assert too_long == 0 and len(examples) == len(questions)
    for q, e in zip(questions, examples):
        # the prompt is the solver's, tokenized as vLLM tokenizes it
        assert e.prompt == tokenizer(answer_prompt(q, tokenizer, 1024).text)["input_ids"]
        assert [tokenizer.decode([t]) for t in e.letters_ids] == q.letters
        assert tokenizer.decode([e.letters_ids[e.answer_index]]) == q.answer


def test_letters_must_be_single_tokens(tokenizer):
    assert len(set(letter_token_ids(tokenizer, list("ABCDEFGHIJ")))) == 10
    with pytest.raises(UserError, match="no single token for the letter 'QXZJW'"):
        letter_token_ids(tokenizer, ["A", "QXZJW"])


def test_answer_position_loss_equals_full_logits_loss(tokenizer, questions):
    """Our loss (the head at each prompt's last position only) is the causal-LM loss with
    one label, the answer letter, computed by transformers over every position."""
    model, _, _ = fresh_model(rank=4)
    model.eval()
    torch.manual_seed(1)
    for name, p in model.named_parameters():  # a non-zero adapter, so it is in the comparison
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    examples = shortest(build_examples(questions, tokenizer, 1024)[0], 4)
    batch = Collate()(items(examples))
    assert (batch["attention_mask"] == 0).any()  # padded rows are part of it
    width = batch["input_ids"].shape[1] + 1
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        n = len(e.prompt)
        ids[i, : n + 1] = torch.tensor(e.prompt + [e.letters_ids[e.answer_index]])
        labels[i, n] = e.letters_ids[e.answer_index]
    with torch.no_grad():
        ours = answer_loss(model, batch)[0].item()
        full = model(input_ids=ids, attention_mask=(labels != -100).cumsum(1).eq(0).long() + (labels != -100).long(),
                     labels=labels)
        # loss: letters is the same label against the option letters' logits only
        choice = torch.stack([full.logits[i, len(e.prompt) - 1, e.letters_ids].float().log_softmax(0)[e.answer_index]
                              for i, e in enumerate(examples)])
        letters_only = answer_loss(model, batch, "letters")[0].item()
    assert abs(ours - full.loss.item()) < 1e-4, (ours, full.loss.item())
    assert abs(letters_only + choice.mean().item()) < 1e-4, (letters_only, -choice.mean().item())
    assert letters_only < ours  # the letters' share of the vocabulary is below one


# Loss and gradients of the cached path against the full forward, within (loss, gradients'
# relative error). float32: four prompts in one padded batch (the cached states were
# computed one prompt at a time; float32 rounds both alike). bfloat16 keeps 8 bits, and a
# prompt's numbers move with its batch (README, "Same answers every run"), so each prompt
# is its own batch there: the same computation, whatever the dtype.
TOL = {"float32": (4, 1e-4, 1e-3), "bfloat16": (1, 1e-3, 1e-2)}  # (prompts a batch, loss, gradients)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_cached_path_gives_the_full_forwards_loss_and_gradients(tokenizer, questions, tmp_path, dtype):
    """LoRA on the top 2 of SmolLM2's 30 layers, the input of layer 26 cached (26 and 27
    then run frozen each step): the loss and every adapter gradient equal those of the
    whole model run from the token ids."""
    model, start, cache_layer = fresh_model(dtype, rank=4, dropout=0.0, layers=2, cache_layer=26)
    assert (start, cache_layer) == (28, 26)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".layers.28." in n or ".layers.29." in n for n in trained)
    examples = shortest(build_examples(questions, tokenizer, 1024)[0], 4)
    base = model.get_base_model()
    cache = ActivationCache(tmp_path, "smollm2", cache_layer, getattr(torch, dtype), base.config.hidden_size)
    with model.disable_adapter():
        cache.fill(base, [e.prompt for e in examples])
    size, loss_tol, grad_tol = TOL[dtype]

    def loss_and_grads(collate: Collate):
        model.zero_grad()
        total = 0.0
        for i in range(0, len(examples), size):
            loss = answer_loss(model, collate(items(examples[i : i + size])))[0] * size / len(examples)
            loss.backward()
            total += loss.item()
        return total, {n: p.grad.float().clone() for n, p in trained.items()}

    full, grads = loss_and_grads(Collate())
    cached, cached_grads = loss_and_grads(Collate(cache))
    assert abs(full - cached) < loss_tol, (full, cached)
    worst = max(((grads[n] - cached_grads[n]).norm() / grads[n].norm()).item() for n in grads)
    assert worst < grad_tol, worst
    assert all(grads[n].abs().sum() > 0 for n in grads)
    # the states enter layer 26, not the first trained layer: skipping 26 and 27 is another model
    skipped = Collate(cache)(items(examples[:1])) | {"enters": start}
    assert abs(answer_loss(model, skipped)[0].item()
               - answer_loss(model, Collate()(items(examples[:1])))[0].item()) > 0.01


def test_a_few_steps_on_cached_states_lower_the_loss(tokenizer, questions, tmp_path):
    model, _, cache_layer = fresh_model(rank=8, dropout=0.0, layers=2)
    examples = shortest(build_examples(questions, tokenizer, 1024)[0], 4)
    base = model.get_base_model()
    cache = ActivationCache(tmp_path, "smollm2", cache_layer, torch.float32, base.config.hidden_size)
    with model.disable_adapter():
        cache.fill(base, [e.prompt for e in examples])
    batch = Collate(cache)(items(examples))

    def loss() -> float:
        with torch.no_grad():
            return answer_loss(model, batch)[0].item()

    before = loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        answer_loss(model, batch)[0].backward()
        optimizer.step()
        optimizer.zero_grad()
    after = loss()
    assert after < before - 0.3, (before, after)


def test_the_activation_cache_resumes_after_a_kill(tokenizer, questions, tmp_path):
    """A pass killed mid-write (half a prompt's states on disk, half its index line) resumes
    with the prompts it had not stored, and ends with the states of an uninterrupted pass."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32)
    prompts = [e.prompt for e in shortest(build_examples(questions, tokenizer, 1024)[0], 6)]
    hidden = model.config.hidden_size

    def cache(name):
        return ActivationCache(tmp_path / name, "smollm2", 20, torch.float32, hidden)

    whole = cache("whole")
    assert whole.fill(model, prompts) == list(range(6))
    assert whole.fill(model, prompts + prompts[:2]) == []  # stored prompts are never computed twice
    killed = cache("killed")
    assert killed.fill(model, prompts[:3]) == [0, 1, 2]
    with open(killed.dir / "hidden.bin", "ab") as f:
        f.write(b"\x01" * 1001)  # not a whole number of floats
    with open(killed.dir / "index.jsonl", "a") as f:
        f.write('["0123abcd", 12')
    resumed = cache("killed")
    assert resumed.fill(model, prompts) == [3, 4, 5]
    for p in prompts:
        assert torch.equal(resumed.get(p), whole.get(p)) and resumed.get(p).shape == (len(p), hidden)
    assert cache("killed").fill(model, prompts) == []


def test_finetune_end_to_end_skips_resumes_and_refuses_another_run(tmp_path):
    out = tmp_path / "run"
    cfg = FinetuneConfig(**TINY | {"layers": 2})
    summary = finetune(SAMPLE, out, cfg)
    assert summary["finished"] and summary["n_train"] == 2 and summary["n_val"] == 3 and summary["steps"] == 1
    assert summary["layers_trained"] == 2 and summary["cache_filled"]["prompts"] == 5
    assert [h["step"] for h in summary["history"]] == [0, 1] and summary["best_step"] == 1
    assert 0 <= summary["base_val_accuracy"] <= 1 and summary["train_tokens_per_s"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "adapter").iterdir()}
    merged = {p.name for p in (out / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= merged
    assert json.loads((out / "run.json").read_text()) == summary

    start = time.perf_counter()
    assert finetune(SAMPLE, out, cfg) == summary  # done: skipped
    assert time.perf_counter() - start < 5

    from transformers import AutoModelForCausalLM

    def weight(path, layer):
        return AutoModelForCausalLM.from_pretrained(path).model.layers[layer].self_attn.q_proj.weight

    base = resolve_model(cfg.model)
    assert not torch.equal(weight(out / "merged", 29), weight(base, 29))  # the adapter is in it
    assert torch.equal(weight(out / "merged", 0), weight(base, 0))  # and only in the top 2 layers

    with pytest.raises(UserError, match="holds a different run"):
        finetune(SAMPLE, out, FinetuneConfig(**TINY | {"lr": 1e-3}))


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    """Killed after its first of two checkpoints, a run trains step 2 only and ends as an
    uninterrupted run does."""
    cfg = FinetuneConfig(**TINY | {"n_train": 4, "layers": 2, "merge": False})
    whole = finetune(SAMPLE, tmp_path / "whole", cfg)
    assert whole["steps"] == 2 and [h["step"] for h in whole["history"]] == [0, 1, 2]
    out = tmp_path / "killed"
    finetune(SAMPLE, out, cfg)
    shutil.rmtree(out / "trainer" / "checkpoint-2")
    shutil.rmtree(out / "adapter")
    (out / "run.json").write_text(json.dumps({"fingerprint": whole["fingerprint"], "finished": False}))
    resumed = finetune(SAMPLE, out, cfg)
    assert resumed["resumed"] and resumed["history"] == whole["history"]
    assert (out / "trainer" / "checkpoint-2").is_dir() and (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("model", ["/no/such/model.gguf", "nosuchmodel"])
def test_unknown_base_model_is_one_line(tmp_path, model):
    with pytest.raises(UserError, match=f"model '{model}'") as e:
        finetune(SAMPLE, tmp_path / "out", FinetuneConfig(model=model))
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_unusable_data_is_refused(tmp_path):
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps(r | {"answer": ""}) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"{unlabelled}: no usable labelled rows"):
        finetune(unlabelled, tmp_path / "a", FinetuneConfig())
    beyond = tmp_path / "beyond.jsonl"
    beyond.write_text("".join(json.dumps(r | {"answer": "J"}) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"{beyond}: no usable labelled rows .*label beyond the options"):
        finetune(beyond, tmp_path / "c", FinetuneConfig())
    with pytest.raises(DataError, match=f"{tmp_path / 'none.csv'}: no such file"):
        finetune(tmp_path / "none.csv", tmp_path / "d", FinetuneConfig())
    dev_only = tmp_path / "dev.jsonl"
    dev_only.write_text("".join(json.dumps(r) + "\n" for r in rows if split_of(r["task_id"]) == "dev"))
    with pytest.raises(DataError, match=f"{dev_only}: no usable training rows"):
        finetune(dev_only, tmp_path / "b", FinetuneConfig())


def test_more_layers_than_the_model_has_is_one_line(tmp_path):
    with pytest.raises(UserError, match="layers: 31, but model 'smollm2-135m-instruct' has 30 layers") as e:
        finetune(SAMPLE, tmp_path / "out", FinetuneConfig(**TINY | {"layers": 31}))
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="cache_layer: 29 is above the first trained layer 28"):
        finetune(SAMPLE, tmp_path / "out", FinetuneConfig(**TINY | {"layers": 2, "cache_layer": 29}))


def test_bad_out_and_config_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no finetune run"):
        finetune(SAMPLE, tmp_path, FinetuneConfig())
    bad = tmp_path / "ft.yaml"
    bad.write_text("train_split: dev\n")
    with pytest.raises(ConfigError, match="both 'dev'"):
        load_config(bad, model=FinetuneConfig)
    bad.write_text("rnak: 8\n")
    with pytest.raises(ConfigError, match="field 'rnak'"):
        load_config(bad, model=FinetuneConfig)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A top-4-layers run that moves the model far enough to tell apart from its base (lr 5e-3, 8 steps)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    finetune(SAMPLE, out, FinetuneConfig(**TINY | {"n_train": 16, "lr": 5e-3, "warmup": 0.0, "layers": 4}))
    return out


IN_PROCESS = """
import json, sys
from solver.api import Solver
from core.config import SolverConfig
from core.data import load_questions
solver = Solver(SolverConfig.model_validate({"backbone": json.loads(sys.argv[1])}))
qs = load_questions(sys.argv[2], labelled=True).questions[:int(sys.argv[3])]
print(json.dumps([p.probabilities for p in solver.solve_batch(qs)]))
solver.close()
"""


def test_vllm_answers_with_a_top_layers_adapter_through_a_server_and_merged_in_process(
        trained, questions, engine_solver):
    """An adapter on the top 4 layers only (vLLM applies no LoRA where it has none): a server
    with base + adapter (vLLM's LoRA path) and the in-process engine of the base with the
    adapter merged in (`merge_lora`: what every shipped finetuned config runs) give the same
    answers, and not the base's. A real vLLM server, and the in-process engine in its own
    process: a second in-process engine here, once closed, would tear down the parallel state
    the session's engine shares."""
    import subprocess
    import sys

    from safetensors import safe_open

    with safe_open(str(trained / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert {k.split(".layers.")[1].split(".")[0] for k in f.keys()} == {"26", "27", "28", "29"}
    from backends.server import start_server, stop_server
    from core.config import BackboneConfig, SolverConfig
    from solver.api import Solver
    from tests.helpers import SMALL

    qs = questions[:6]
    probs = {"base": [p.probabilities for p in engine_solver.solve_batch(qs)]}
    adapter = {"lora": str(trained / "adapter")}
    proc, url = start_server(BackboneConfig(**SMALL | adapter))
    solver = None
    try:
        solver = Solver(SolverConfig.model_validate({"backbone": SMALL | adapter | {"backend": "server",
                                                                                    "base_url": url}}))
        probs["adapter"] = [p.probabilities for p in solver.solve_batch(qs)]
    finally:
        if solver is not None:
            solver.close()
        stop_server(proc)
    merged = SMALL | adapter | {"merge_lora": True}
    run = subprocess.run([sys.executable, "-c", IN_PROCESS, json.dumps(merged), str(SAMPLE), str(len(qs))],
                         capture_output=True, text=True, check=True, cwd=SAMPLE.parents[2])
    probs["merged"] = json.loads(run.stdout.strip().splitlines()[-1])

    def gap(a, b):
        """Mean absolute difference of the option probabilities, over every option of every question."""
        d = [abs(x[k] - y[k]) for x, y in zip(probs[a], probs[b]) for k in x]
        return sum(d) / len(d)

    assert all(set(p) == set(q.letters) for name in probs for p, q in zip(probs[name], qs))
    same = sum(max(m, key=m.get) == max(a, key=a.get) for m, a in zip(probs["merged"], probs["adapter"]))
    seen = {"merged~adapter": gap("merged", "adapter"), "merged~base": gap("merged", "base"), "same letters": same}
    # bf16 rounds the merged weights and the adapter's path differently: close, not equal
    assert seen["merged~adapter"] < 0.02 and seen["merged~base"] > 4 * seen["merged~adapter"], seen
    assert same >= len(qs) - 1, seen


def test_a_merged_adapter_is_made_once_and_keyed_by_its_bytes(trained, tmp_path, monkeypatch):
    from backends.models import merged_model

    monkeypatch.setenv("CODEMCQ_CACHE", str(tmp_path / "models"))
    base = resolve_model("smollm2-135m-instruct")
    first = merged_model(base, str(trained / "adapter"))
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert merged_model(base, str(trained / "adapter")) == first  # cached: not merged again
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp
    other = tmp_path / "other"
    shutil.copytree(trained / "adapter", other)
    (other / "adapter_config.json").write_text(
        (other / "adapter_config.json").read_text().replace('"lora_alpha": 32', '"lora_alpha": 16'))
    assert merged_model(base, str(other)) != first  # other bytes, another folder
    with pytest.raises(UserError, match=f"lora '{tmp_path}': no adapter_config.json"):
        merged_model(base, str(tmp_path))
