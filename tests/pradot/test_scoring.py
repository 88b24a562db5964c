"""``assignment_scores``'s choice of path (``path=``): the fast cell-wise path and the general path give the
same Eq. 6 scores on a bank that allows both (correctness of each against the reference:
test_performance_paths.py)."""

import pytest
import torch

from pradot.prototypes import BankConfig, PrototypeBank
from pradot.scoring import SCORING_PATHS, assignment_scores, cell_copies


def grid_bank(alpha: float, n, learn_coordinates: bool = False) -> PrototypeBank:
    cfg = BankConfig(
        stage=2,
        alpha=alpha,
        n=n,
        grid=(4, 3),
        dim=5,
        backbone="test",
        image_size=32,
        learn_coordinates=learn_coordinates,
    )
    bank = PrototypeBank(cfg, seed=0)
    bank.features.copy_(torch.randn(bank.features.shape, generator=torch.Generator().manual_seed(1)))
    return bank


def random_feats(B: int = 3) -> torch.Tensor:
    return torch.randn(B, 5, 4, 3, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_general_path_on_a_grid_bank_gives_the_fast_path_scores(n, alpha):
    bank, feats = grid_bank(alpha, n), random_feats()
    assert cell_copies(bank) == n
    s_auto, j_auto = assignment_scores(bank, feats)
    s_cells, j_cells = assignment_scores(bank, feats, path="cells")
    s_gen, j_gen = assignment_scores(bank, feats, path="general", chunk=2)
    assert torch.equal(s_auto, s_cells) and torch.equal(j_auto, j_cells)  # auto takes the fast path
    assert torch.allclose(s_gen, s_cells, atol=1e-6)
    assert torch.equal(j_gen, j_cells)  # random features: no ties, the very same prototypes


def test_cells_path_needs_a_grid_bank_and_unknown_paths_are_refused():
    bank = grid_bank(0.3, 2, learn_coordinates=True)
    bank.coords.add_(0.05)  # moved prototypes: only the general path applies
    assert cell_copies(bank) is None
    s_auto, _ = assignment_scores(bank, random_feats())
    s_gen, _ = assignment_scores(bank, random_feats(), path="general")
    assert torch.equal(s_auto, s_gen)
    with pytest.raises(ValueError, match="cells"):
        assignment_scores(bank, random_feats(), path="cells")
    with pytest.raises(ValueError, match="path"):
        assignment_scores(bank, random_feats(), path="fast")
    assert SCORING_PATHS == ("auto", "cells", "general")
