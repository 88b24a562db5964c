"""FOCT's memories: Eq. 3 (foreground split), the semantic memory's subsampling, Top-K augmentation (Eq. 6)
against a brute-force selection, compression (Eq. 7) through pradot.coreset with its covering radius within
twice the brute-force optimum, and an episodic memory that stays bounded over a long stream."""

import itertools

import pytest
import torch

from pradot.coreset import covering_radius, greedy_coreset
from pradot.fewshot.memory import (
    EpisodicMemory,
    compress,
    semantic_memory,
    split_foreground,
    subsample,
    topk_augmentation,
)


def test_split_foreground_eq3():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 4, 5, generator=g)
    m = torch.rand(2, 4, 5, generator=g) > 0.6
    fore, back = split_foreground(f, m)
    expected_fore = [f[k, :, y, x] for k in range(2) for y in range(4) for x in range(5) if m[k, y, x]]
    expected_back = [f[k, :, y, x] for k in range(2) for y in range(4) for x in range(5) if not m[k, y, x]]
    torch.testing.assert_close(fore, torch.stack(expected_fore))
    torch.testing.assert_close(back, torch.stack(expected_back))
    with pytest.raises(ValueError, match="grid"):
        split_foreground(f, m[:, :3])


def test_semantic_memory_subsamples_each_side_with_the_coreset():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 6, 8, 8, generator=g)
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[:, 2:6, 2:6] = True  # 48 foreground, 144 background features
    mem = semantic_memory(f, m, foreground_ratio=0.25, background_ratio=0.05, projection_dim=None)
    assert len(mem) == 12 + 7 and int(mem.foreground.sum()) == 12
    fore, back = split_foreground(f, m)
    torch.testing.assert_close(mem.features[:12], fore[greedy_coreset(fore, 12, projection_dim=None)])
    torch.testing.assert_close(mem.features[12:], back[greedy_coreset(back, 7, projection_dim=None)])
    with pytest.raises(ValueError, match="ratio"):
        subsample(fore, 0.0)


def _brute_topk(pi, fg, kf, kb):
    rel = pi.max(1).values.tolist()
    fgs = sorted([j for j in range(len(rel)) if fg[j]], key=lambda j: -rel[j])
    bgs = sorted([j for j in range(len(rel)) if not fg[j]], key=lambda j: -rel[j])
    nf, nb = min(kf, len(fgs)), min(kb, len(bgs))
    nf, nb = min(len(fgs), nf + kb - nb), min(len(bgs), nb + kf - min(kf, len(fgs)))
    return fgs[:nf] + bgs[:nb]


@pytest.mark.parametrize("kf,kb,n_fg", [(2, 3, 6), (2, 3, 1), (4, 1, 9), (3, 3, 0), (2, 2, 10)])
def test_topk_augmentation_eq6(kf, kb, n_fg):
    g = torch.Generator().manual_seed(kf * 10 + n_fg)
    pi = torch.softmax(torch.randn(10, 4, generator=g) * 3, dim=1)
    fg = torch.zeros(10, dtype=torch.bool)
    fg[torch.randperm(10, generator=g)[:n_fg]] = True
    idx = topk_augmentation(pi, fg, kf, kb)
    assert idx.tolist() == _brute_topk(pi, fg, kf, kb)
    assert len(idx) == min(kf + kb, 10) and len(set(idx.tolist())) == len(idx)


def test_compress_eq7_uses_the_coreset_and_covers_within_twice_the_optimum():
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(11, 3, generator=g)
        k = 3
        kept = compress(x, k, projection_dim=None)
        torch.testing.assert_close(kept, x[greedy_coreset(x, k, projection_dim=None)])
        idx = torch.tensor([int(torch.nonzero((x == r).all(1))[0]) for r in kept])
        optimum = min(covering_radius(x, torch.tensor(c)) for c in itertools.combinations(range(11), k))
        # greedy k-center: radius <= 2 x optimum for the distance, 4 x for Eq. 7's squared distance
        assert covering_radius(x, idx) ** 0.5 <= 2 * optimum**0.5 + 1e-6


def test_episodic_memory_stays_below_capacity_over_a_long_stream():
    g = torch.Generator().manual_seed(0)
    mem = EpisodicMemory(dim=5, capacity=20, compression=0.25, projection_dim=None)
    sizes = []
    for _ in range(300):
        mem.add(torch.randn(7, 5, generator=g))
        sizes.append(len(mem))
    assert max(sizes) < 20 and min(sizes) >= 5 and mem.compressions > 50
    assert mem.compressed_size == 5
    mem.reset()
    assert len(mem) == 0
    with pytest.raises(ValueError, match="capacity"):
        EpisodicMemory(dim=5, capacity=0)
    with pytest.raises(ValueError, match="lambda"):
        EpisodicMemory(dim=5, compression=1.0)
