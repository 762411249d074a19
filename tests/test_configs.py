"""The shipped configs load; each single-<name>.yaml is vote.yaml with one backbone (and
none of the three's fitted weights), and vote-served.yaml is vote.yaml with every backbone
served; configs compose by `include:`."""

from pathlib import Path

import pytest

from core.config import BackboneConfig, load_config
from tests.helpers import ROOT

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
    unweighted = vote.vote.model_copy(update={"weights": {}})
    for b in vote.backbones:
        (single,) = [s for s in singles.values() if s.backbones == [b]]
        assert single.vote == unweighted
        assert single.model_dump(exclude={"name", "backbones", "vote"}) == vote.model_dump(
            exclude={"name", "backbones", "vote"})


def test_vote_served_is_the_vote_config_with_servers():
    vote, served = (load_config(ROOT / "configs" / f"{n}.yaml") for n in ("vote", "vote-served"))
    assert [b.backend for b in served.backbones] == ["server"] * len(vote.backbones)
    assert [b.model_copy(update={"backend": "engine"}) for b in served.backbones] == vote.backbones
    assert served.model_dump(exclude={"name", "backbones"}) == vote.model_dump(exclude={"name", "backbones"})


def test_labelled_data_is_the_users_and_never_the_scored_split(tmp_path):
    """--labelled fills retrieval; scored against a dev/test split of the same file, only its
    split train is indexed; a retrieving config without any answers without retrieval (a note)."""
    from core.config import with_labelled
    from solver.cli import _configured

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
    from core.config import as_graph
    from graphs.build import enabled_nodes

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


@pytest.mark.parametrize("model, label", [("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b"),
                                          ("/m/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
                                          ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct"),
                                          ("/models/my.model/", "my.model")])
def test_a_backbone_is_labelled_by_its_models_name_dots_kept(model, label):
    assert BackboneConfig(model=model).label == label
    assert BackboneConfig(model=model, served_name="mine").label == "mine"


def test_a_config_states_what_differs_from_what_it_includes(tmp_path):
    """Mappings merge key by key, lists and values are replaced, the file itself wins; a
    missing or circular include is one line naming the file."""
    from core.config import ConfigError

    (tmp_path / "base.yaml").write_text("backbone: {model: a, kv_cache_gb: 1}\nanswer: {orders: 2, batch_size: 8}\n"
                                        "graph: {enabled: true}\nvote: {rule: pool, weights: {a: 0.5}}\n")
    (tmp_path / "mine.yaml").write_text("include: base.yaml\nanswer: {batch_size: 4}\nvote: {weights: {b: 2.0}}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert (cfg.name, cfg.answer.orders, cfg.answer.batch_size, cfg.backbone.kv_cache_gb) == ("mine", 2, 4, 1)
    assert cfg.vote.weights == {"a": 0.5, "b": 2.0} and cfg.vote.rule == "pool"
    (tmp_path / "two.yaml").write_text("include: [mine.yaml]\nbackbones: [{model: b}, {model: c}]\n")
    assert [b.label for b in load_config(tmp_path / "two.yaml").backbones] == ["b", "c"]  # backbones replace backbone
    (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
    with pytest.raises(ConfigError, match=r"loop.yaml: include 'loop.yaml': includes itself$"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "odd.yaml").write_text("include: {base.yaml: 1}\n")
    with pytest.raises(ConfigError, match=r"odd.yaml: field 'include': a config file or a list of them$"):
        load_config(tmp_path / "odd.yaml")
    (tmp_path / "named.yaml").write_text("name: base\nanswer: {orders: 1}\n")
    (tmp_path / "child.yaml").write_text("include: named.yaml\n")
    assert load_config(tmp_path / "child.yaml").name == "child"  # named by its own file, not its base
    (tmp_path / "gone.yaml").write_text("include: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml: include 'nowhere.yaml': no such config file$"):
        load_config(tmp_path / "gone.yaml")


def test_a_config_file_may_still_use_a_keys_old_name(tmp_path):
    """kind -> backend, execute.eliminate -> rule_out, reanswer.eliminate -> drop_rejected."""
    from core.config import ConfigError

    (tmp_path / "old.yaml").write_text("backbones: [{model: a, kind: server, base_url: 'http://h/v1'}, {model: b}]\n"
                                       "execute: {eliminate: [compile]}\nreanswer: {eliminate: false}\n"
                                       "graph: {enabled: true}\n")
    old = load_config(tmp_path / "old.yaml")
    assert [b.backend for b in old.backbones] == ["server", "engine"]
    assert (old.execute.rule_out, old.reanswer.drop_rejected) == (["compile"], False)
    (tmp_path / "new.yaml").write_text("include: old.yaml\nbackbone: {model: a, backend: engine}\n")
    assert load_config(tmp_path / "new.yaml").backbone.backend == "engine"
    (tmp_path / "both.yaml").write_text("backbone: {kind: server, backend: engine}\n")
    with pytest.raises(ConfigError, match=r"both.yaml: field 'backbone.kind': the old name of 'backend'"):
        load_config(tmp_path / "both.yaml")


def test_no_block_is_pasted_twice():
    """Every shipped config loads its shared parts from configs/include/: no mapping of more
    than one key appears in two files."""
    import yaml

    seen: dict[str, str] = {}
    for path in [*CONFIGS, *sorted((ROOT / "configs" / "include").glob("*.yaml"))]:
        for key, block in (yaml.safe_load(path.read_text()) or {}).items():
            if isinstance(block, dict) and len(block) > 1:
                text = yaml.safe_dump(block, sort_keys=True)
                assert text not in seen, f"{path.name}: '{key}' is pasted from {seen[text]}"
                seen[text] = path.name


def test_a_pool_whose_every_weight_is_zero_is_refused(tmp_path):
    from core.config import ConfigError

    (tmp_path / "zero.yaml").write_text("backbone: {model: a}\nanswer: {orders: 2}\ngraph: {enabled: true}\n"
                                        "vote: {rule: pool, weights: {a: 0.0, b: 1.0}}\n")
    with pytest.raises(ConfigError, match=r"zero.yaml: .*every backbone's pool weight is 0 \(a\)"):
        load_config(tmp_path / "zero.yaml")
