"""The fast paths of the OT solver and of the Eq. 6 scorer give the reference results.

- scoring: the cell-wise fast path (n copies of the grid, fixed coordinates) and the general path
  (learnt coordinates, n < 1) against ``assignment_scores_reference``;
- transport: the numba fused pass, the torch fallbacks, huge-page buffers and the finiteness check
  against each other and against POT's log-domain Sinkhorn.
"""

import numpy as np
import ot
import pytest
import torch

from pradot import buffers, scoring
from pradot import cost as cost_module
from pradot.prototypes import BankConfig, PrototypeBank
from pradot.scoring import assignment_scores, assignment_scores_reference, cell_copies
from pradot.transport import _cpu, sinkhorn, sinkhorn_log

# ------------------------------------------------------------------------------------------ scoring


def make_bank(alpha, n, grid=(5, 4), dim=6, seed=0, learn_coordinates=False):
    cfg = BankConfig(
        stage=2,
        alpha=alpha,
        n=n,
        grid=grid,
        dim=dim,
        backbone="test",
        image_size=32,
        learn_coordinates=learn_coordinates,
    )
    bank = PrototypeBank(cfg, seed=seed)
    bank.features.copy_(torch.randn(bank.features.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return bank


def make_feats(B=5, dim=6, grid=(5, 4), seed=3):
    feats = torch.randn(B, dim, *grid, generator=torch.Generator().manual_seed(seed))
    feats[1] = 0.0  # an all-black image: zero features (cosine 0 everywhere)
    return feats


def check_against_reference(bank, feats, **kw):
    s, j = assignment_scores(bank, feats, **kw)
    s_ref, j_ref = assignment_scores_reference(bank, feats)
    assert s.shape == s_ref.shape and j.shape == j_ref.shape and j.dtype == torch.long
    assert torch.isfinite(s).all()
    assert torch.allclose(s, s_ref, atol=1e-5), float((s - s_ref).abs().max())
    # the returned prototype attains the minimum of the reference cost matrix (ties may pick another one)
    B, _, H, W = feats.shape
    for b in range(B):
        z, c = bank.embeddings(feats[b : b + 1])
        M = bank.cost(z, c)
        assert torch.allclose(M.gather(1, j[b][:, None])[:, 0], s_ref[b], atol=1e-5)
    return s, j, s_ref, j_ref


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_cell_fast_path_equals_reference(n, alpha):
    bank = make_bank(alpha, n)
    assert cell_copies(bank) == n  # the fast path is taken
    feats = make_feats()
    s, j, s_ref, j_ref = check_against_reference(bank, feats, chunk=2)
    if alpha < 1.0:  # random features: no exact ties, so the very same prototypes
        assert torch.equal(j[[0, 2, 3, 4]], j_ref[[0, 2, 3, 4]])
    else:  # the cost does not depend on the features: everyone picks the first prototype at its cell
        assert torch.equal(j, j_ref)


@pytest.mark.parametrize("n", [1, 3])
def test_fast_path_blocks_and_chunks_do_not_matter(n, monkeypatch):
    bank = make_bank(0.3, n)
    feats = make_feats(B=4)
    s0, j0 = assignment_scores(bank, feats, chunk=8)
    # row blocks smaller than an image, not aligned with image boundaries
    monkeypatch.setattr(scoring, "BLOCK_ELEMENTS", 7 * bank.n_prototypes)
    for chunk in (1, 3, 100):
        s, j = assignment_scores(bank, feats, chunk=chunk)
        assert torch.allclose(s, s0, atol=1e-6) and torch.equal(j, j0)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_general_path_with_learnt_coordinates_equals_reference(alpha):
    bank = make_bank(alpha, 2, learn_coordinates=True)
    bank.coords.add_(0.05 * torch.rand(bank.coords.shape, generator=torch.Generator().manual_seed(7)))
    assert cell_copies(bank) is None  # moved prototypes: the general path
    _, j, _, j_ref = check_against_reference(bank, make_feats(), chunk=2)
    assert (j == j_ref).float().mean() > 0.95


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_general_path_with_fewer_prototypes_than_cells_equals_reference(alpha):
    bank = make_bank(alpha, 0.5, grid=(6, 4))
    assert cell_copies(bank) is None
    check_against_reference(bank, make_feats(grid=(6, 4)), chunk=3)


# ------------------------------------------------------------------------------------------ cost


@pytest.mark.parametrize("n", [1, 3, 0.5])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_in_place_grid_cost_equals_the_direct_formula(n, alpha, monkeypatch):
    """``grid_cost`` (training's builder) is Eq. 3 as ``cost(z, c)`` writes it, for several blocks."""
    monkeypatch.setattr(cost_module, "BUILD_BLOCK_ELEMENTS", 50)  # blocks of 1 image: several blocks
    bank = make_bank(alpha, n)
    feats = make_feats()  # includes an all-black image
    z, c = bank.embeddings(feats)
    M = bank.grid_cost(z)
    ref = bank.cost(z, c)
    assert M.shape == ref.shape and M.dtype == ref.dtype
    assert torch.allclose(M, ref, atol=1e-6, rtol=0), float((M - ref).abs().max())
    assert float(M.min()) >= 0.0 and float(M.max()) <= 1.0 + 1e-6
    if alpha in (0.0, 1.0):  # one max-normalised term
        assert float(M.max()) == pytest.approx(1.0, abs=1e-6)


def test_in_place_grid_cost_with_learnt_coordinates_float64_and_bad_rows():
    bank = make_bank(0.4, 2, learn_coordinates=True)
    bank.features.data = bank.features.double()
    bank.coords.data = torch.rand(bank.coords.shape, generator=torch.Generator().manual_seed(7)).double()
    z, c = bank.embeddings(make_feats(B=3))
    z = z.double()
    M = bank.grid_cost(z)
    assert M.dtype == torch.float64
    assert torch.allclose(M, bank.cost(z, c), atol=1e-6, rtol=0)  # the direct formula's coordinates are float32
    with pytest.raises(ValueError, match="whole images"):
        bank.grid_cost(z[:-1])
    with pytest.raises(ValueError, match="feature dimensions"):
        bank.grid_cost(z[:, :-1])


def test_identical_features_give_a_finite_cost():
    """All cosines 1: the feature term's maximum is 0 and is used as is (no 0/0), as in the direct formula."""
    bank = make_bank(0.3, 1)
    bank.features.copy_(torch.ones_like(bank.features))
    feats = torch.ones(2, 6, 5, 4)
    z, c = bank.embeddings(feats)
    M = bank.grid_cost(z)
    assert torch.isfinite(M).all()
    assert torch.allclose(M, bank.cost(z, c), atol=1e-6)


# ---------------------------------------------------------------------------------------- transport


def pot_plan(M: torch.Tensor, eps: float, n_iter: int = 100) -> np.ndarray:
    N, P = M.shape
    return ot.bregman.sinkhorn(
        np.full(N, 1 / N),
        np.full(P, 1 / P),
        M.double().numpy(),
        reg=eps,
        method="sinkhorn_log",
        numItermax=n_iter,
        stopThr=0.0,
    )


def rel_diff(T, ref) -> float:
    T = T.double().numpy() if isinstance(T, torch.Tensor) else T
    return float(np.abs(T - ref).max() / ref.max())


def structured_cost(N=300, P=120, seed=2):
    """A normalised cost with a prototype and an embedding far from everything (the hard cases)."""
    g = torch.Generator().manual_seed(seed)
    M = torch.rand(N, P, generator=g, dtype=torch.float64) * 0.2
    M[:, 3] = 1.0
    M[11, :] = 1.0
    return M


needs_numba = pytest.mark.skipif(_cpu._numba_kernels() is None, reason="numba is not installed")


@needs_numba
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("eps", [0.001, 0.01, 0.1])
def test_numba_backend_matches_pot_and_torch(eps):
    M = structured_cost()
    ref = pot_plan(M, eps)
    for dtype in (torch.float32, torch.float64):
        Md = M.to(dtype)
        before = Md.clone()
        fast = sinkhorn(Md, eps, backend="numba", threads=2, return_result=True)
        assert torch.equal(Md, before)  # the cost matrix is not modified
        assert torch.isfinite(fast.plan).all()
        assert rel_diff(fast.plan, ref) < 1e-3
        for backend in ("torch", "torch-blocked"):
            other = sinkhorn(Md, eps, backend=backend, return_result=True)
            assert rel_diff(fast.plan, other.plan.double().numpy()) < (1e-4 if dtype == torch.float32 else 1e-9)
            assert fast.n_absorb == other.n_absorb
            assert abs(fast.marginal_error - other.marginal_error) < 1e-5


@needs_numba
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_numba_backend_survives_a_kernel_row_that_underflows_to_zero():
    """eps=0.001 and an embedding far from every prototype: its whole kernel row is 0, K v = 0 and the
    scaling 1/0 must become inf (then the log-domain step), not an exception."""
    M = torch.rand(300, 120, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 0.2
    M[11, :] = 1.0  # every column has a row within 0.2 of it, row 11 is at 1.0: exp(-0.8 / 0.001) = 0
    for dtype in (torch.float32, torch.float64):
        res = sinkhorn(M.to(dtype), 0.001, backend="numba", return_result=True)
        assert res.n_absorb >= 1 and torch.isfinite(res.plan).all()
        assert rel_diff(res.plan, pot_plan(M, 0.001)) < 1e-3


@needs_numba
def test_numba_backend_threads_warm_start_and_early_stop():
    M = structured_cost(seed=4).float()
    one = sinkhorn(M, 0.05, backend="numba", threads=1)
    two = sinkhorn(M, 0.05, backend="numba", threads=3)
    assert rel_diff(one, two.double().numpy()) < 1e-5
    cold = sinkhorn(M, 0.05, n_iter=300, backend="numba", return_result=True)
    warm = sinkhorn(M, 0.05, n_iter=10, warm_start=(cold.f, cold.g), backend="numba", return_result=True)
    warm_t = sinkhorn(M, 0.05, n_iter=10, warm_start=(cold.f, cold.g), backend="torch", return_result=True)
    assert rel_diff(warm.plan, warm_t.plan.double().numpy()) < 1e-4
    assert rel_diff(warm.plan, cold.plan.double().numpy()) < 1e-4
    early = sinkhorn(M.double(), 0.05, n_iter=1000, tol=1e-6, backend="numba", return_result=True)
    assert early.n_iter < 1000 and early.marginal_error < 1e-6


@needs_numba
def test_auto_backend_choice(monkeypatch):
    M = structured_cost()
    assert _cpu._pick_backend("auto", M) == "torch-blocked"  # small: no numba dispatch overhead
    monkeypatch.setattr(_cpu, "NUMBA_MIN_ELEMENTS", 1)
    assert _cpu._pick_backend("auto", M) == "numba"
    monkeypatch.setitem(_cpu._numba_state, "kernels", None)  # numba missing or broken
    assert _cpu._pick_backend("auto", M) == "torch-blocked"
    with pytest.raises(ValueError, match="numba"):
        sinkhorn(M, 0.1, backend="numba")
    with pytest.raises(ValueError, match="backend"):
        sinkhorn(M, 0.1, backend="cuda-magic")


def test_hugepage_buffers_give_the_same_plan(monkeypatch):
    M = structured_cost(seed=5).float()
    plain = sinkhorn(M, 0.01)
    monkeypatch.setattr(buffers, "HUGEPAGE_MIN_BYTES", 0)
    buf = buffers.empty_matrix((300, 120), torch.float32, torch.device("cpu"))
    assert buf.shape == (300, 120) and buf.is_contiguous()
    huge = sinkhorn(M, 0.01)
    assert torch.equal(plain, huge)
    bank, feats = make_bank(0.3, 2), make_feats()
    z, c = bank.embeddings(feats)
    assert torch.allclose(bank.grid_cost(z), bank.cost(z, c), atol=1e-6)  # the cost matrix in a huge-page buffer
    del buf
    assert float(huge.sum()) == pytest.approx(1.0, abs=1e-5)  # still valid after other buffers are freed


def test_finiteness_check_without_temporaries():
    M = torch.full((4, 3), 3e38)  # finite entries whose float32 sum overflows
    assert _cpu._all_finite(M)
    M[2, 1] = float("inf")
    assert not _cpu._all_finite(M)
    M[2, 1] = float("nan")
    assert not _cpu._all_finite(M)
    with pytest.raises(ValueError, match="NaN"):
        sinkhorn(M, 0.1)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_log_domain_reference_and_fast_solver_agree_on_a_prototype_grid_cost():
    """A realistic Eq. 3 cost (features + grid coordinates, n=2): fast solver == log-domain reference."""
    bank = make_bank(0.3, 2, grid=(6, 5), dim=8)
    z, c = bank.embeddings(torch.randn(3, 8, 6, 5, generator=torch.Generator().manual_seed(9)).relu())
    M = bank.cost(z, c)
    for eps in (0.001, 0.01):
        fast = sinkhorn(M, eps)
        ref = sinkhorn_log(M.double(), eps)
        assert torch.isfinite(fast).all()
        assert rel_diff(fast, ref.numpy()) < 1e-3
