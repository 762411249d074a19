"""The shipped configs load; each single-<name>.yaml is vote.yaml with one backbone, and
vote-served.yaml is vote.yaml with every backbone served."""

from pathlib import Path

import pytest

from core.config import load_config
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path: Path):
    if path.stem == "finetune" or path.stem.startswith("finetune-"):
        from finetune.config import FinetuneConfig

        load_config(path, FinetuneConfig)
    else:
        assert load_config(path).name == path.stem


def test_single_configs_are_the_vote_graph_with_one_backbone():
    vote = load_config(ROOT / "configs" / "vote.yaml")
    singles = {p.stem: load_config(p) for p in CONFIGS if p.name.startswith("single-")}
    assert len(singles) == len(vote.backbones)
    for b in vote.backbones:
        (single,) = [s for s in singles.values() if s.backbones == [b]]
        assert single.model_dump(exclude={"name", "backbones"}) == vote.model_dump(exclude={"name", "backbones"})


def test_vote_served_is_the_vote_config_with_servers():
    vote, served = (load_config(ROOT / "configs" / f"{n}.yaml") for n in ("vote", "vote-served"))
    assert [b.kind for b in served.backbones] == ["server"] * len(vote.backbones)
    assert [b.model_copy(update={"kind": "engine"}) for b in served.backbones] == vote.backbones
    assert served.model_dump(exclude={"name", "backbones"}) == vote.model_dump(exclude={"name", "backbones"})


def test_labelled_data_is_the_users_and_never_the_scored_split(tmp_path):
    """--labelled fills retrieval; scored against a dev/test split of the same file, only its
    split train is indexed; a retrieving config without any answers without retrieval (a note)."""
    from solver.cli import _configured
    from core.config import with_labelled

    graph = load_config(ROOT / "configs" / "graph.yaml")
    cfg, note = with_labelled(graph, "mine.csv")
    assert (cfg.retrieve.enabled, cfg.retrieve.data, cfg.retrieve.split, note) == (True, "mine.csv", None, None)
    cfg, note = with_labelled(graph.model_copy(update={"answer": graph.answer.model_copy(update={"shots": 3})}), None)
    assert not cfg.retrieve.enabled and cfg.answer.shots == 0 and "--labelled FILE" in note
    data = tmp_path / "train.csv"
    data.write_text("task_id,question,choices,answer\n")  # --labelled must name a file that is there
    assert _configured(ROOT / "configs" / "graph.yaml", data, held_out_of=data).retrieve.split == "train"
    assert _configured(ROOT / "configs" / "graph.yaml", data, held_out_of=tmp_path / "other.csv").retrieve.split is None
    assert with_labelled(load_config(ROOT / "configs" / "baseline.yaml"), None)[1] is None  # retrieves nothing: no note


def test_best_is_the_finetuned_pipeline():
    """configs/best.yaml is the most accurate config measured (its header gives the figures):
    today configs/finetuned.yaml; the two must not drift apart."""
    best, finetuned = (load_config(ROOT / "configs" / f"{n}.yaml") for n in ("best", "finetuned"))
    assert best.model_dump(exclude={"name"}) == finetuned.model_dump(exclude={"name"})


def test_the_single_pass_is_the_graph_with_its_other_steps_off():
    from graphs.build import enabled_nodes
    from core.config import as_graph

    graph = load_config(ROOT / "configs/graph.yaml")
    assert as_graph(graph) is graph
    baseline = load_config(ROOT / "configs/baseline.yaml").model_copy(update={
        "vote": load_config(ROOT / "configs/baseline.yaml").vote.model_copy(update={"rule": "majority"})})
    run = as_graph(baseline)
    assert enabled_nodes(run) == ["answer", "vote", "decide"] and run.vote.rule == "mean"
    assert [b.label for b in run.backbones] == [baseline.backbone.label] and run.answer.orders == 1
    assert run.vote.debias.source == "none" and run.answer.batch_size == baseline.answer.batch_size


def test_config_comments_name_the_cache_root_not_a_working_folder():
    """Everything kept lives under the cache root (core/cache.py); a comment pointing at
    `.cache/` sends a user to a folder that is not there."""
    for path in CONFIGS:
        assert ".cache/" not in path.read_text(), path.name
