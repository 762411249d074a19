"""Vote-combination rules and Dawid-Skene EM: pure functions on fixed numbers (no model)."""

import numpy as np
import pytest

from core.types import top_letter
from graphs import vote as V

L4 = ["A", "B", "C", "D"]


def test_mean_is_the_hand_computed_average():
    votes = {"x": {"A": 0.5, "B": 0.5, "C": 0.0}, "y": {"A": 0.1, "B": 0.2, "C": 0.7}}
    assert V.mean(votes, ["A", "B", "C"]) == pytest.approx({"A": 0.3, "B": 0.35, "C": 0.35})


def test_majority_counts_beat_confidence_and_mean_breaks_ties():
    votes = {"x": {"A": 0.4, "B": 0.6}, "y": {"A": 0.45, "B": 0.55}, "z": {"A": 1.0, "B": 0.0}}
    assert V.mean(votes, ["A", "B"])["A"] > 0.5  # A is more probable on average ...
    out = V.majority(votes, ["A", "B"])  # ... but B has two votes to one
    assert top_letter(out) == "B" and sum(out.values()) == pytest.approx(1)
    assert out["B"] == pytest.approx((2 + 0.5 * (1.15 / 3)) / 3.5)
    # 1-1 tie: x is barely for A, y is strongly for B -> mean B = 0.625 > A = 0.375
    tie = {"x": {"A": 0.55, "B": 0.45, "C": 0.0}, "y": {"A": 0.2, "B": 0.8, "C": 0.0}}
    out = V.majority(tie, ["A", "B", "C"])
    assert out == pytest.approx({"A": 1.1875 / 2.5, "B": 1.3125 / 2.5, "C": 0.0})
    assert top_letter(out) == "B" and sum(out.values()) == pytest.approx(1)


def synthetic(seed=0, n=600, k=4, accs=(0.9, 0.75, 0.6, 0.45, 0.3)):
    """Annotators with known accuracy (errors uniform over the others) + one that says 0
    80% of the time whatever the truth (else a uniform guess)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    items = []
    for t in truth:
        said = {}
        for j, a in enumerate(accs):
            said[f"a{j}"] = int(t) if rng.random() < a else int((t + rng.integers(1, k)) % k)
        said["biased"] = 0 if rng.random() < 0.8 else int(rng.integers(0, k))
        items.append(said)
    return items, truth, accs


def test_em_recovers_reliabilities_and_beats_majority():
    items, truth, accs = synthetic()
    res = V.dawid_skene(items, [4] * len(items))
    for j, a in enumerate(accs):
        est = float(res.prior @ np.diag(res.confusion[f"a{j}"]))
        assert abs(est - a) < 0.06, (j, est, a)
    assert (res.confusion["biased"][:, 0] > 0.6).all()
    em_acc = np.mean([p.argmax() for p in res.posteriors] == truth)
    onehot = [{v: {L4[s]: 1.0} for v, s in said.items()} for said in items]
    maj_acc = np.mean([L4.index(top_letter(V.majority(o, L4))) for o in onehot] == truth)
    print(f"EM accuracy {em_acc:.3f} vs majority {maj_acc:.3f}")
    assert em_acc > maj_acc
    assert 0 < res.iterations <= 100


def test_mixed_option_counts():
    items = [{"x": 0, "y": 1}, {"x": 2, "y": 2}, {"x": 4, "y": 3}, {}, {"y": 1}]
    n = [2, 3, 5, 3, 2]
    res = V.dawid_skene(items, n)
    assert [len(p) for p in res.posteriors] == n
    for p in res.posteriors:
        assert p.sum() == pytest.approx(1) and (p > 0).all() and np.isfinite(p).all()
    assert res.posteriors[3] == pytest.approx(res.prior[:3] / res.prior[:3].sum(), abs=1e-4)
    for c in res.confusion.values():
        assert c.shape == (5, 5) and np.isfinite(c).all() and c.sum(1) == pytest.approx(1)
    with pytest.raises(ValueError):
        V.dawid_skene([{"x": 2}], [2])


def test_confusion_from_labels_by_hand():
    items = [{"a": 0, "b": 0}, {"a": 1}, {"a": 1, "b": 0}]
    truth, n = [0, 1, 0], [2, 2, 2]
    c = V.confusion_from_labels(items, truth, n, smoothing=0)  # 26 x 26: any later question fits
    assert c["a"].shape == (26, 26) and c["a"][:2, :2] == pytest.approx(np.array([[0.5, 0.5], [0, 1]]))
    assert c["b"][0, :2] == pytest.approx([1, 0]) and c["b"][1] == pytest.approx(np.full(26, 1 / 26))  # no truth-1 item
    c = V.confusion_from_labels(items, truth, n, smoothing=1)  # pseudo: 1 diagonal, 1/26 elsewhere
    row0 = np.array([2, 1 + 1 / 26] + [1 / 26] * 24)
    assert c["a"][0] == pytest.approx(row0 / row0.sum())


def test_weighted_follows_the_reliable_voter():
    conf = {"good": np.full((3, 3), 0.05) + np.eye(3) * 0.85,
            "bad": np.full((3, 3), 0.3) + np.eye(3) * 0.1}
    letters = [["A", "B", "C"], ["A", "B"]]
    batch = [{"good": {"B": 0.9, "A": 0.1}, "bad": {"A": 0.99, "B": 0.01}},
             {"good": {"A": 0.6, "B": 0.4}, "bad": {"B": 1.0}, "new": {"B": 1.0}}]
    dists, used = V.weighted(batch, letters, conf)
    assert top_letter(dists[0]) == "B" and top_letter(dists[1]) == "A"
    assert all(sum(d.values()) == pytest.approx(1) for d in dists)
    assert used["new"][0] == pytest.approx(np.array([1, 1 / 3, 1 / 3]) / (5 / 3))


def test_weighted_breaks_ties_by_probability():
    same = np.full((2, 2), 0.2) + np.eye(2) * 0.6  # two voters trusted alike, who disagree
    for x, y, want in ((0.55, 0.8, "B"), (0.9, 0.6, "A")):
        batch = [{"x": {"A": x, "B": 1 - x}, "y": {"A": 1 - y, "B": y}}]
        (dist,), _ = V.weighted(batch, [["A", "B"]], {"x": same, "y": same})
        assert top_letter(dist) == want and dist["A"] == pytest.approx(0.5, abs=1e-5)


def test_deterministic():
    items, _, _ = synthetic(seed=1, n=200)
    a, b = V.dawid_skene(items, [4] * 200), V.dawid_skene(items, [4] * 200)
    assert all(np.array_equal(x, y) for x, y in zip(a.posteriors, b.posteriors))
    assert a.iterations == b.iterations and np.array_equal(a.prior, b.prior)
    batch = [{v: {L4[s]: 1.0} for v, s in said.items()} for said in items[:50]]
    assert V.weighted(batch, [L4] * 50)[0] == V.weighted(batch, [L4] * 50)[0]


def test_pool_weighs_backbones_and_keeps_confidence():
    votes = {"big@0": {"A": 0.7, "B": 0.2, "C": 0.1}, "big@1": {"A": 0.6, "B": 0.3, "C": 0.1},
             "small@0": {"A": 0.01, "B": 0.9, "C": 0.09}}
    equal = V.pool(votes, ["A", "B", "C"], {})
    logs = {k: np.log(votes["big@0"][k]) + np.log(votes["big@1"][k]) + np.log(votes["small@0"][k]) for k in "ABC"}
    z = sum(np.exp(list(logs.values())))
    assert equal == pytest.approx({k: np.exp(v) / z for k, v in logs.items()})
    assert top_letter(equal) == "B"  # the small model's certainty that A is wrong outweighs two mild votes for A
    assert top_letter(V.pool(votes, ["A", "B", "C"], {"small": 0.0})) == "A"  # a backbone at weight 0 is ignored


def test_fit_pool_finds_the_informative_backbone():
    rng = np.random.default_rng(0)
    items, letters, truth = [], [], []
    for _ in range(300):
        t = int(rng.integers(4))
        good = np.full(4, 0.1) + 0.6 * np.eye(4)[t] * (rng.random() < 0.8)
        noise = rng.dirichlet(np.ones(4))
        items.append({"good@0": dict(zip(L4, good / good.sum())), "noise@0": dict(zip(L4, noise))})
        letters.append(L4)
        truth.append(L4[t])
    w = V.fit_pool(items, letters, truth)
    assert w["good"] > 1.0 and w["noise"] < 0.2, w


def test_pride_prior_recovers_a_position_bias():
    """A backbone that adds a fixed pull towards position 0 to a content-based answer: every
    cyclic order shows each option in each position once, so the estimate is the pull."""
    from graphs.vote import cyclic, debias, estimate, sample

    rng = np.random.default_rng(1)
    pull = np.array([0.55, 0.15, 0.15, 0.15])
    per_q = []
    for _ in range(40):
        content = rng.dirichlet(np.ones(4))
        views = []
        for k in range(4):
            shown = content[cyclic(4, k)]  # the option at each position
            p = shown * pull
            views.append(list(p / p.sum()))
        per_q.append(views)
    prior = estimate(per_q)["4"]
    assert prior == pytest.approx(list(pull), abs=1e-6)
    biased = (np.array([0.2, 0.3, 0.25, 0.25]) * pull) / (np.array([0.2, 0.3, 0.25, 0.25]) * pull).sum()
    assert top_letter(dict(zip(L4, biased))) == "A"
    assert debias(list(biased), prior) == pytest.approx([0.2, 0.3, 0.25, 0.25])
    assert cyclic(3, 1) == [1, 2, 0]
    ids = [f"q{i}" for i in range(200)]
    picked = sample(ids, share=0.05, at_least=3)
    assert len(picked) == 10 and picked == sample(ids[::-1], share=0.05, at_least=3)  # order does not matter
    assert len(sample(ids[:20], share=0.05, at_least=3)) == 3 and sample(ids, 0.05, 3, seed=1) != picked
