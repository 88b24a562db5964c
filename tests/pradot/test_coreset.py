"""Greedy min-max coresets (pradot.coreset) against a brute-force optimum of Eq. 7 on small sets."""

import itertools

import pytest
import torch

from pradot.coreset import covering_radius, greedy_coreset, random_projection


def brute_force_radius(x: torch.Tensor, k: int) -> float:
    return min(covering_radius(x, torch.tensor(c)) for c in itertools.combinations(range(len(x)), k))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_greedy_radius_within_twice_the_optimum(seed, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(11, 3, generator=g) * torch.tensor([3.0, 1.0, 0.2])
    idx = greedy_coreset(x, k, projection_dim=None)
    assert len(set(idx.tolist())) == k
    # squared distances: the 2x guarantee on distances is 4x on their squares
    r, opt = covering_radius(x, idx), brute_force_radius(x, k)
    assert opt <= r + 1e-6
    assert r**0.5 <= 2 * opt**0.5 + 1e-6


def test_greedy_picks_the_farthest_point_each_time():
    x = torch.tensor([[0.0], [1.0], [10.0], [4.0]])
    assert greedy_coreset(x, 3, projection_dim=None).tolist() == [0, 2, 3]
    assert covering_radius(x, torch.tensor([0, 2, 3])) == pytest.approx(1.0)
    assert greedy_coreset(x, 4, projection_dim=None).tolist() == [0, 2, 3, 1]


def test_projection_keeps_distances_and_the_selection_is_deterministic():
    x = torch.randn(200, 512, generator=torch.Generator().manual_seed(0))
    p = random_projection(x, 128, seed=1)
    ratio = torch.pdist(p) / torch.pdist(x)
    assert 0.7 < float(ratio.min()) and float(ratio.max()) < 1.3
    assert torch.equal(greedy_coreset(x, 20, 128, seed=1), greedy_coreset(x, 20, 128, seed=1))
    assert random_projection(x[:, :64], 128) is not None and random_projection(x[:, :64], 128).shape == (200, 64)


def test_bad_arguments():
    with pytest.raises(ValueError, match="coreset size"):
        greedy_coreset(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="coreset size"):
        greedy_coreset(torch.zeros(3, 2), 0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        greedy_coreset(torch.zeros(3), 1)
