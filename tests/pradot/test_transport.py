"""The OT solvers (Eq. 4) against POT's log-domain Sinkhorn, the authors' solver."""

import numpy as np
import ot
import pytest
import torch

from pradot.transport import (
    NUMBA_MIN_ELEMENTS,
    _cpu,
    numba_available,
    sinkhorn,
    sinkhorn_backend,
    sinkhorn_log,
    sinkhorn_profile,
    transport_cost,
)


def pot_plan(M: torch.Tensor, eps: float, n_iter: int = 100) -> np.ndarray:
    N, P = M.shape
    return ot.bregman.sinkhorn(
        np.full(N, 1 / N), np.full(P, 1 / P), M.double().numpy(), reg=eps, method="sinkhorn_log", numItermax=n_iter
    )


def rel_diff(T: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(T.double().numpy() - ref).max() / ref.max())


def normalised_random_cost(N, P, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.rand(N, P, generator=g, dtype=torch.float64)
    return M / M.max()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("eps", [0.01, 0.05])
@pytest.mark.parametrize("solver", [sinkhorn, sinkhorn_log])
def test_fidelity_to_pot(eps, solver):
    M = normalised_random_cost(240, 96, seed=1)
    ref = pot_plan(M, eps)
    assert rel_diff(solver(M, eps, n_iter=100), ref) < 1e-4
    # float32 (the training dtype) stays within the same tolerance
    assert rel_diff(solver(M.float(), eps, n_iter=100), ref) < 1e-4


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("eps", [0.001, 0.01, 0.1])
def test_fast_solver_on_adversarial_matrices(eps):
    """A column far from every row, a row far from every column, eps down to 0.001: no NaN/inf, POT's plan."""
    M = normalised_random_cost(200, 80, seed=2) * 0.2
    M[:, 3] = 1.0  # a prototype far from every embedding
    M[11, :] = 1.0  # an embedding far from every prototype
    ref = pot_plan(M, eps)
    for dtype in (torch.float64, torch.float32):
        res = sinkhorn(M.to(dtype), eps, n_iter=100, return_result=True)
        assert torch.isfinite(res.plan).all()
        assert rel_diff(res.plan, ref) < 1e-3
    # the row marginals are exact after the last (row) update, like POT
    assert torch.allclose(res.plan.sum(1).double(), torch.full((200,), 1 / 200, dtype=torch.float64), rtol=1e-4)


def test_absorption_happens_for_small_eps_and_is_exact():
    M = normalised_random_cost(150, 60, seed=3)
    M[:, 0] = 1.0
    res = sinkhorn(M, 0.001, n_iter=100, return_result=True)
    assert res.n_absorb >= 1  # the stabilisation was exercised ...
    assert rel_diff(res.plan, pot_plan(M, 0.001)) < 1e-6  # ... and changed nothing


def test_warm_start_and_early_stop():
    M = normalised_random_cost(120, 40, seed=4)
    cold = sinkhorn(M, 0.05, n_iter=300, return_result=True)
    # warm-started from the converged potentials, 10 iterations are as good as 300 cold ones
    warm = sinkhorn(M, 0.05, n_iter=10, warm_start=(cold.f, cold.g), return_result=True)
    assert rel_diff(warm.plan, cold.plan.numpy()) < 1e-6
    # early stop on the marginal error stops before n_iter and meets the tolerance
    early = sinkhorn(M, 0.05, n_iter=1000, tol=1e-6, return_result=True)
    assert early.n_iter < 1000
    assert early.marginal_error < 1e-6


def test_transport_cost_and_plan_mass():
    M = normalised_random_cost(50, 20, seed=5)
    T = sinkhorn(M, 0.05)
    assert abs(float(T.sum()) - 1.0) < 1e-6
    assert transport_cost(M, T) == pytest.approx(float((M * T).sum()))


@pytest.mark.parametrize("bad_eps", [0, -0.1, float("nan"), float("inf")])
def test_eps_must_be_positive(bad_eps):
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(torch.rand(4, 3), bad_eps)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_log(torch.rand(4, 3), bad_eps)


def test_nan_cost_is_refused():
    M = torch.rand(4, 3)
    M[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sinkhorn(M, 0.1)


# ------------------------------------------------------------------ backend choice and profile (public hooks)


def test_sinkhorn_backend_resolves_auto_and_checks_explicit_choices(monkeypatch):
    small = normalised_random_cost(64, 32, seed=8)
    large = torch.zeros(NUMBA_MIN_ELEMENTS // 512, 512)
    assert sinkhorn_backend(small) == "torch-blocked"  # small CPU matrix: no numba dispatch overhead
    assert sinkhorn_backend(small, "torch") == "torch"
    assert sinkhorn_backend(large) == ("numba" if numba_available() else "torch-blocked")
    with pytest.raises(ValueError, match="backend"):
        sinkhorn_backend(small, "cuda-magic")
    monkeypatch.setitem(_cpu._numba_state, "kernels", None)  # numba missing or broken
    assert numba_available() is False
    assert sinkhorn_backend(large) == "torch-blocked"
    with pytest.raises(ValueError, match="numba"):
        sinkhorn_backend(small, "numba")
    with pytest.raises(ValueError, match="numba"):
        sinkhorn(small, 0.1, backend="numba")  # the same decision as the solver's


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sinkhorn_backend_on_gpu():
    M = normalised_random_cost(64, 32, seed=8).cuda()
    assert sinkhorn_backend(M) == "torch"
    with pytest.raises(ValueError, match="CPU"):
        sinkhorn_backend(M, "torch-blocked")


PROFILE_PHASES = (
    "input_check",
    "initial_column_min",
    "kernel_build",
    "kernel_rebuild",
    "iteration_pass",
    "iteration_check",
    "final_scaling",
)


@pytest.mark.parametrize("backend", ["auto", "torch", "torch-blocked", "numba"])
def test_sinkhorn_profile_times_every_phase_and_leaves_the_cost_alone(backend):
    if backend == "numba" and not numba_available():
        pytest.skip("numba is not installed")
    M = normalised_random_cost(300, 120, seed=10).float()
    before = M.clone()
    prof = sinkhorn_profile(M, 0.01, backend=backend, repeats=2)
    assert set(prof) == {*PROFILE_PHASES, "backend"}
    assert prof["backend"] == sinkhorn_backend(M, backend)
    assert all(isinstance(prof[k], float) and prof[k] > 0 for k in PROFILE_PHASES), prof
    assert torch.equal(M, before)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_profile(M, 0.0)
