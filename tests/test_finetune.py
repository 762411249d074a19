"""LoRA finetuning: the real embedded SmolLM2-135M and the shipped sample questions, tiny runs.

Prompts are kept short (max_len cuts the question text) and runs to a few steps: the
machine that runs these is small and shared.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from finetune.config import FinetuneConfig
from finetune.data import IGNORE, batch_order, build_examples, collate, letter_token_ids
from finetune.train import answer_loss, finetune, load_model, train_batch
from solver.config import ConfigError, load_config
from solver.data import DataError, load_questions, split_of
from solver.models import resolve_model
from solver.prompts import answer_prompt
from solver.types import UserError
from tests.conftest import SAMPLE

# A tiny run on the sample: 2 training questions in one step, validated on the 3 dev questions.
TINY = dict(dtype="float32", rank=4, max_len=160, batch_size=2, n_train=2, epochs=1, val_n=3, eval_every=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches: two threads wait on each other more than they work (6 min against 40 s here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def questions():
    return load_questions(SAMPLE, labelled=True).questions


def shortest(examples, n):
    return sorted(examples, key=lambda e: len(e.input_ids))[:n]


def fresh_model(**cfg):
    cfg = FinetuneConfig(dtype="float32", **cfg)
    return load_model(resolve_model(cfg.model), cfg, "cpu", torch.float32)[1]


def test_loss_mask_is_the_answer_letter_only(tokenizer, questions):
    examples, too_long = build_examples(questions, tokenizer, 1024)
    assert too_long == 0 and len(examples) == len(questions)
    for q, e in zip(questions, examples):
        assert [i for i, label in enumerate(e.labels) if label != IGNORE] == [len(e.input_ids) - 1]
        assert tokenizer.decode(e.input_ids[-1:]) == q.answer == tokenizer.decode([e.labels[-1]])
        # the prompt is the solver's, tokenized as vLLM tokenizes it
        assert e.input_ids[:-1] == tokenizer(answer_prompt(q, tokenizer, 1024).text)["input_ids"]
        assert [tokenizer.decode([t]) for t in e.letters_ids] == q.letters
        assert e.letters_ids[e.answer_index] == e.input_ids[-1]


def test_letters_must_be_single_tokens(tokenizer):
    assert len(set(letter_token_ids(tokenizer, list("ABCDEFGHIJ")))) == 10
    with pytest.raises(UserError, match="no single token for the letter 'QXZJW'"):
        letter_token_ids(tokenizer, ["A", "QXZJW"])


def test_batches_group_lengths_and_repeat_by_seed():
    lengths = [(i * 37) % 101 for i in range(300)]
    first = batch_order(lengths, 8, seed=0, epoch=0)
    assert sorted(i for b in first for i in b) == list(range(300))
    assert first == batch_order(lengths, 8, seed=0, epoch=0) != batch_order(lengths, 8, seed=0, epoch=1)

    def pad(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    unsorted = [list(range(300))[j : j + 8] for j in range(0, 300, 8)]
    assert pad(first) < pad(unsorted) / 4


def test_answer_position_loss_equals_full_logits_loss(tokenizer, questions):
    model = fresh_model(rank=4).eval()
    torch.manual_seed(1)
    for name, p in model.named_parameters():  # a non-zero adapter, so it is in the comparison
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    examples = shortest(build_examples(questions, tokenizer, 1024)[0], 4)
    batch = collate(examples)
    assert (batch["attention_mask"] == 0).any()  # padded rows are part of it
    with torch.no_grad():
        ours = answer_loss(model, batch).item()
        reference = model(**batch).loss.item()
    assert abs(ours - reference) < 1e-4, (ours, reference)


def test_a_few_steps_lower_the_training_loss(tokenizer, questions):
    model = fresh_model(rank=8, dropout=0.0)
    examples = shortest(build_examples(questions, tokenizer, 1024)[0], 4)

    def loss() -> float:
        with torch.no_grad():
            return answer_loss(model, collate(examples)).item()

    before = loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        train_batch(model, examples, "cpu")
        optimizer.step()
        optimizer.zero_grad()
    after = loss()
    assert after < before - 0.3, (before, after)


def test_finetune_end_to_end_skips_resumes_and_refuses_another_run(tmp_path):
    out = tmp_path / "run"
    cfg = FinetuneConfig(**TINY)
    summary = finetune(SAMPLE, out, cfg, quiet=True)
    assert summary["finished"] and summary["n_train"] == 2 and summary["n_val"] == 3 and summary["steps"] == 1
    assert [h["step"] for h in summary["history"]] == [0, 1] and summary["best_step"] == 1
    assert 0 <= summary["base_val_accuracy"] <= 1 and summary["train_tokens_per_s"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "adapter").iterdir()}
    merged = {p.name for p in (out / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= merged
    assert json.loads((out / "run.json").read_text()) == summary and (out / "checkpoint.pt").is_file()

    start = time.perf_counter()
    assert finetune(SAMPLE, out, cfg, quiet=True) == summary  # done: skipped
    assert time.perf_counter() - start < 5

    # Killed after its last checkpoint: it resumes there (no step trained again) and finishes.
    (out / "run.json").write_text(json.dumps({"fingerprint": summary["fingerprint"], "finished": False}))
    for p in (out / "merged").iterdir():
        p.unlink()
    (out / "merged").rmdir()
    again = finetune(SAMPLE, out, cfg, quiet=True)
    assert again["history"] == summary["history"] and (out / "merged" / "model.safetensors").is_file()

    from transformers import AutoModelForCausalLM

    def q_proj(path):
        return AutoModelForCausalLM.from_pretrained(path).model.layers[0].self_attn.q_proj.weight

    assert not torch.equal(q_proj(out / "merged"), q_proj(resolve_model(cfg.model)))  # the adapter is in it

    with pytest.raises(UserError, match="holds a different run"):
        finetune(SAMPLE, out, FinetuneConfig(**TINY | {"lr": 1e-3}), quiet=True)


@pytest.mark.parametrize("model", ["/no/such/model.gguf", "nosuchmodel"])
def test_unknown_base_model_is_one_line(tmp_path, model):
    with pytest.raises(UserError, match=f"model '{model}'") as e:
        finetune(SAMPLE, tmp_path / "out", FinetuneConfig(model=model), quiet=True)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_unusable_data_is_refused(tmp_path):
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps(r | {"answer": ""}) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"{unlabelled}: no usable labelled rows"):
        finetune(unlabelled, tmp_path / "a", FinetuneConfig(), quiet=True)
    dev_only = tmp_path / "dev.jsonl"
    dev_only.write_text("".join(json.dumps(r) + "\n" for r in rows if split_of(r["task_id"]) == "dev"))
    with pytest.raises(DataError, match=f"{dev_only}: no usable training rows"):
        finetune(dev_only, tmp_path / "b", FinetuneConfig(), quiet=True)


def test_bad_out_and_config_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no finetune run"):
        finetune(SAMPLE, tmp_path, FinetuneConfig(), quiet=True)
    bad = tmp_path / "ft.yaml"
    bad.write_text("train_split: dev\n")
    with pytest.raises(ConfigError, match="both 'dev'"):
        load_config(bad, model=FinetuneConfig)
    bad.write_text("rnak: 8\n")
    with pytest.raises(ConfigError, match="field 'rnak'"):
        load_config(bad, model=FinetuneConfig)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run that moves the model far enough to tell apart from its base (lr 5e-3, 8 steps)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    finetune(SAMPLE, out, FinetuneConfig(**TINY | {"n_train": 16, "lr": 5e-3, "warmup": 0.0}), quiet=True)
    return out


def test_vllm_answers_with_the_merged_model_and_with_the_adapter(trained, questions, engine_solver):
    """What `configs/finetuned.yaml` does (the merged folder as the model) and what vLLM's
    LoRA support does (a server with base + adapter) give the same answers, and not the
    base's. Real vLLM servers: a second in-process engine, once closed, would tear down
    the parallel state the session's engine shares."""
    from solver.api import Solver
    from solver.config import BackboneConfig, SolverConfig
    from solver.server import start_server, stop_server
    from tests.conftest import SMALL

    qs = questions[:12]
    probs = {"base": engine_solver.solve_batch(qs)}
    for name, bb in {"merged": {"model": str(trained / "merged")}, "adapter": {"lora": str(trained / "adapter")}}.items():
        proc, url = start_server(BackboneConfig(**SMALL | bb))
        solver = None
        try:
            solver = Solver(SolverConfig.model_validate({"backbone": SMALL | bb | {"kind": "server", "base_url": url}}))
            probs[name] = solver.solve_batch(qs)
        finally:
            if solver is not None:
                solver.close()
            stop_server(proc)

    def gap(a, b):
        """Mean absolute difference of the option probabilities, over every option of every question."""
        d = [abs(x.probabilities[k] - y.probabilities[k]) for x, y in zip(probs[a], probs[b]) for k in x.probabilities]
        return sum(d) / len(d)

    assert all(p.letter in q.letters for name in probs for p, q in zip(probs[name], qs))
    same = sum(m.letter == a.letter for m, a in zip(probs["merged"], probs["adapter"]))
    seen = {"merged~adapter": gap("merged", "adapter"), "merged~base": gap("merged", "base"), "same letters": same}
    # bf16 rounds the merged weights and the adapter's path differently: close, not equal
    assert seen["merged~adapter"] < 0.02 and seen["merged~base"] > 4 * seen["merged~adapter"], seen
    assert same >= len(qs) - 1, seen
