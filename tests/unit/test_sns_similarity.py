"""Similarity metrics, important neurons and per-layer similarity on hand-computed examples."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from advneurons.sns.common import PENULTIMATE
from advneurons.sns.importance import channel_importance, important_neurons, ranked_by, compute_targeted_neurons, vote_counts
from advneurons.sns.similarity import (
    average_pair,
    chance_jaccard,
    chance_levenshtein,
    fc_top_unit_is_target,
    importance_summary,
    importance_vs_sensitivity,
    jaccard,
    compute_layer_similarity,
    levenshtein_distance,
    levenshtein_similarity,
    spearman,
    total_jaccard,
)


def plain_levenshtein(a, b) -> int:
    """TIP Eq 7 written out as the textbook dynamic programme."""
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return prev[-1]


# ------------------------------------------------------------------------------------------ Levenshtein
@pytest.mark.parametrize(
    "a, b, distance",
    [
        ([1, 2, 3], [2, 3, 4], 2),  # delete 1, append 4
        ([5, 6, 7, 8], [5, 9, 7], 2),  # substitute 6 -> 9, delete 8
        ([], [1, 2], 2),
        ([1, 2, 3, 4], [4, 3, 2, 1], 4),  # no two elements keep their relative order except singletons
        ([10, 200, 3000], [200, 3000, 10], 2),  # rotation: delete the head, append it
        ([7], [7], 0),
    ],
)
def test_levenshtein_distance_hand_computed(a, b, distance):
    assert levenshtein_distance(a, b) == distance
    assert plain_levenshtein(a, b) == distance


def test_levenshtein_similarity_formula():
    # 1 - d / (|a| + |b|): d=2 over 6 elements; d=2 over 7; identical; disjoint singletons d=1 over 2.
    assert levenshtein_similarity([1, 2, 3], [2, 3, 4]) == pytest.approx(1 - 2 / 6)
    assert levenshtein_similarity([5, 6, 7, 8], [5, 9, 7]) == pytest.approx(1 - 2 / 7)
    assert levenshtein_similarity([3, 1, 2], [3, 1, 2]) == 1.0
    assert levenshtein_similarity([1], [2]) == 0.5
    assert levenshtein_similarity([], []) == 1.0


def test_rapidfuzz_levenshtein_agrees_with_plain_dp_on_random_sequences():
    rng = np.random.default_rng(3)
    for _ in range(300):
        a = rng.integers(0, 12, rng.integers(0, 9)).tolist()
        b = (
            (rng.integers(0, 12, rng.integers(0, 9)) * 1000).tolist()
            if rng.random() < 0.2
            else rng.integers(0, 12, rng.integers(0, 9)).tolist()
        )
        assert levenshtein_distance(a, b) == plain_levenshtein(a, b), (a, b)


# --------------------------------------------------------------------------------------------- Jaccard
def test_jaccard_total_and_average_pair_hand_computed():
    a, b, c = [1, 2, 3], [2, 3, 4], [3, 4, 5]
    assert jaccard(a, b) == 0.5
    assert jaccard(a, c) == pytest.approx(1 / 5)
    assert total_jaccard([a, b, c]) == pytest.approx(1 / 5)  # {3} / {1..5}
    assert total_jaccard([a, a]) == 1.0
    assert average_pair(jaccard, [a, b, c]) == pytest.approx((0.5 + 0.2 + 0.5) / 3)
    assert np.isnan(average_pair(jaccard, [a]))
    assert np.isnan(jaccard([], []))


def test_spearman_matches_eq6_without_ties():
    sigma = np.array([0.9, 0.5, 0.1, 0.3])  # ranks 1 2 4 3
    votes = np.array([30, 40, 0, 10])  # ranks 2 1 4 3
    d2 = 1 + 1 + 0 + 0
    rho, _ = spearman(sigma, votes)
    assert rho == pytest.approx(1 - 6 * d2 / (4**3 - 4))
    assert spearman(sigma, 2 * sigma)[0] == pytest.approx(1.0)
    assert np.isnan(spearman(sigma, np.zeros(4))[0])


def test_chance_jaccard_matches_enumeration():
    # n=4, k=2: overlap 0 / 1 / 2 with probabilities 1/6, 4/6, 1/6 -> Jaccard 0, 1/3, 1.
    assert chance_jaccard(4, 2) == pytest.approx(4 / 6 / 3 + 1 / 6)
    subsets = list(itertools.combinations(range(6), 3))
    brute = np.mean([jaccard(s, t) for s in subsets for t in subsets])
    assert chance_jaccard(6, 3) == pytest.approx(brute)


def test_chance_levenshtein_close_to_enumeration():
    seqs = list(itertools.permutations(range(4), 2))
    exact = np.mean([levenshtein_similarity(s, t) for s in seqs for t in seqs])
    assert chance_levenshtein(4, 2, samples=4000, seed=1) == pytest.approx(exact, abs=0.02)


# ---------------------------------------------------------------------------------- important neurons
def test_channel_importance_is_feature_times_target_weight():
    feats = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]])
    weight = torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, 1.0]])
    assert channel_importance(feats, weight, 1).tolist() == [[2.0, 2.0, 0.0], [0.0, 3.0, 1.0]]
    assert channel_importance(feats, weight, torch.tensor([0, 1])).tolist() == [[1.0, 0.0, 0.0], [0.0, 3.0, 1.0]]


def test_votes_give_rank_one_k_votes():
    phi = np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.6], [0.3, 0.8, 0.1]])
    pi = important_neurons(phi, k=2)
    assert pi.tolist() == [[1, 2], [0, 2], [1, 0]]
    votes = vote_counts(pi, 3, k=2)  # ch0: 2 (row 2 rank 1) + 1 (row 3 rank 2); ch1: 2 + 2; ch2: 1 + 1
    assert votes.tolist() == [3, 4, 2]
    assert ranked_by(votes, 2) == [1, 0]
    assert important_neurons(np.array([[0.0, 0.0, 1.0]]), 2).tolist() == [[2, 0]]  # ties: lower channel first


def _targeted_tables(rows_sens, rows_imp):
    sens = pd.DataFrame(rows_sens, columns=["target", "layer", "depth", "channel", "sensitivity", "n_pairs"])
    imp = pd.DataFrame(rows_imp, columns=["target", "channel", "votes", "mean_phi", "n_pairs"])
    return sens, imp


def test_importance_vs_sensitivity_hand_computed():
    sigma = [0.4, 0.1, 0.3, 0.2]  # Omega (k=2) = [0, 2]
    votes = [5, 8, 0, 3]  # Gamma (k=2) = [1, 0]
    sens, imp = _targeted_tables(
        [(7, PENULTIMATE, 13, c, s, 9) for c, s in enumerate(sigma)],
        [(7, c, v, 0.0, 9) for c, v in enumerate(votes)],
    )
    row = importance_vs_sensitivity(sens, imp, k=2).iloc[0]
    assert row["omega"] == "0 2" and row["gamma"] == "1 0"
    assert row["jaccard"] == pytest.approx(1 / 3)
    assert row["levenshtein_similarity"] == pytest.approx(1 - 2 / 4)  # [1,0] -> [0,2]: delete 1, append 2
    # ranks sigma: 1 4 2 3; votes: 2 1 4 3 -> d^2 = 1 + 9 + 4 + 0 = 14
    assert row["spearman"] == pytest.approx(1 - 6 * 14 / 60)
    summary = importance_summary(importance_vs_sensitivity(sens, imp, k=2)).set_index("metric")
    assert summary.loc["spearman", "paper_mean_cifar10_vgg16"] == 0.428
    assert summary.loc["levenshtein_similarity", "paper_mean_cifar10_vgg16"] == 0.554
    assert summary.loc["jaccard", "chance"] == pytest.approx(chance_jaccard(4, 2))


def test_layer_similarity_hand_computed():
    # Layer "a": 10 channels, top 10% = 1 channel, channel 3 for every target -> all similarities 1.
    # Layer "b": 20 channels, top 2 per target: [1, 2], [2, 1], [1, 3].
    tops_b = {0: [1, 2], 1: [2, 1], 2: [1, 3]}
    rows = []
    for target in range(3):
        for c in range(10):
            rows.append((target, "a", 0, c, 1.0 if c == 3 else 0.1 * c / 10, 5))
        for c in range(20):
            first, second = tops_b[target]
            value = 2.0 if c == first else 1.5 if c == second else 0.01 * c
            rows.append((target, "b", 1, c, value, 5))
        rows.append((target, "fc", 2, 0, 1.0, 5))
    sens = pd.DataFrame(rows, columns=["target", "layer", "depth", "channel", "sensitivity", "n_pairs"])
    table = compute_layer_similarity(sens, top_percent=10).set_index("layer")
    assert list(table.index) == ["a", "b"]  # fc excluded by default
    assert table.loc["a", ["total_jaccard", "avg_pair_jaccard", "avg_pair_levenshtein"]].tolist() == [1.0, 1.0, 1.0]
    assert table.loc["b", "k"] == 2
    assert table.loc["b", "total_jaccard"] == pytest.approx(1 / 3)
    assert table.loc["b", "avg_pair_jaccard"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert table.loc["b", "avg_pair_levenshtein"] == pytest.approx((0.5 + 0.75 + 0.5) / 3)


def test_fc_top_unit_check():
    rows = [(t, "fc", 0, c, 1.0 if c == (t if t < 2 else 0) else 0.0, 1) for t in range(3) for c in range(3)]
    sens = pd.DataFrame(rows, columns=["target", "layer", "depth", "channel", "sensitivity", "n_pairs"])
    assert fc_top_unit_is_target(sens)["matches"].tolist() == [True, True, False]


def test_targeted_neurons_match_direct_computation(tiny_vgg):
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(6, 3, 32, 32, generator=g)
    adv = (clean + 0.2 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    from advneurons.evaluation.pairs import PairSet

    pairs = PairSet(
        clean.numpy(), adv.numpy(), np.zeros(6, np.int64), np.zeros(6, np.int64), np.zeros(6, np.int64), np.arange(6)
    )
    target = np.array([2, 2, 2, 5, 5, 5])
    sens, imp = compute_targeted_neurons(tiny_vgg, pairs, target, k=3, batch_size=2)
    with torch.no_grad():
        f_clean = tiny_vgg.flatten(tiny_vgg.features(tiny_vgg.normalize(clean)))
        f_adv = tiny_vgg.flatten(tiny_vgg.features(tiny_vgg.normalize(adv)))
    w = tiny_vgg.fc.weight.detach()
    for y, rows in ((2, slice(0, 3)), (5, slice(3, 6))):
        expected_sens = (f_clean[rows] - f_adv[rows]).abs().mean(0).numpy()
        got = sens[(sens["target"] == y) & (sens["layer"] == PENULTIMATE)].sort_values("channel")["sensitivity"]
        np.testing.assert_allclose(got.to_numpy(), expected_sens, rtol=1e-5, atol=1e-7)
        phi = (f_adv[rows] * w[y]).numpy()
        expected_votes = np.zeros(phi.shape[1], int)
        for r in phi:
            for rank, ch in enumerate(sorted(range(len(r)), key=lambda c: (-r[c], c))[:3]):
                expected_votes[ch] += 3 - rank
        got_votes = imp[imp["target"] == y].sort_values("channel")["votes"].to_numpy()
        np.testing.assert_array_equal(got_votes, expected_votes)
    layers = sens[["layer", "depth"]].drop_duplicates().sort_values("depth")["layer"].tolist()
    assert layers == [f"conv{i}" for i in range(1, 14)] + [PENULTIMATE, "fc"]
