"""The shipped configs load; each single-<name>.yaml is vote.yaml with one backbone, and
vote-served.yaml is vote.yaml with every backbone served."""

from pathlib import Path

import pytest

from solver.config import load_config
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
