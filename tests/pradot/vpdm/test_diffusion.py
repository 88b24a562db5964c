"""VPDM's diffusion (Eq. 12-15, Algorithm 2) against independent computations: Monte Carlo iteration of Eq. 13,
Bayes' rule on Gaussians, an oracle noise predictor."""

import math

import pytest
import torch

from pradot.vpdm.diffusion import (
    NoiseSchedule,
    forward_step_mean,
    marginal_moments,
    posterior_coefficients,
    posterior_moments,
    predict_x0,
    sample,
)

SCHEDULE = NoiseSchedule.linear(1000, 1e-4, 0.02)  # the paper's (appendix D)


def test_eq14_moments_match_iterating_eq13_monte_carlo():
    """Draw x^t by iterating Eq. 13 step by step (a short schedule with large steps, so that the test is fast);
    its sample mean and variance at several t must match Eq. 14 within 5 standard errors of the sample size;
    the printed variance 1 - sqrt(alpha^t) must not."""
    schedule = NoiseSchedule.linear(60, 1e-3, 0.1)
    n = 100_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64)
    y = torch.tensor([-0.5, 1.0, 0.3], dtype=torch.float64)
    x = x0.expand(n, 3).clone()
    checks = {1, 5, 15, 30, 60}
    alpha = schedule.alpha
    rejected_printed = 0
    for t in range(1, schedule.T + 1):
        beta = float(schedule.betas[t - 1])
        x = forward_step_mean(x, y, beta) + math.sqrt(beta) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if t not in checks:
            continue
        mean, var = marginal_moments(x0, y, float(alpha[t - 1]))
        emp_mean, emp_var = x.mean(0), x.var(0)
        se_mean = torch.sqrt(var / n)
        se_var = var * math.sqrt(2.0 / (n - 1))
        assert torch.all((emp_mean - mean).abs() < 5 * se_mean), (t, emp_mean, mean)
        assert torch.all((emp_var - var).abs() < 5 * se_var), (t, emp_var, var)
        printed = 1.0 - math.sqrt(float(alpha[t - 1]))
        rejected_printed += bool(torch.all((emp_var - printed).abs() > 5 * se_var))
    assert rejected_printed >= 3  # the printed Eq. 14 variance is refuted where alpha^t is not near 0 or 1


def test_eq12_endpoint_is_the_vague_condition():
    x0, y = torch.full((4,), 3.0, dtype=torch.float64), torch.full((4,), -1.0, dtype=torch.float64)
    mean, var = marginal_moments(x0, y, float(SCHEDULE.alpha[-1]))
    assert torch.allclose(mean, y, atol=0.03)  # sqrt(alpha^T) ~ 6e-3
    assert torch.allclose(var, torch.ones(4, dtype=torch.float64), atol=1e-4)


def _bayes_posterior(schedule: NoiseSchedule, i: int, x0, xt, y):
    """q(x^{t-1} | x^0, x^t, y) by Bayes' rule: prior q(x^{t-1} | x^0, y) from iterating Eq. 13's moments (no
    Eq. 14), likelihood q(x^t | x^{t-1}, y) of Eq. 13; the product of the two Gaussians in closed form."""
    m, v = x0.clone(), 0.0
    for j in range(i):  # moments of x^{t-1} with t - 1 = i steps
        s = math.sqrt(1.0 - float(schedule.betas[j]))
        m, v = s * m + (1.0 - s) * y, s * s * v + float(schedule.betas[j])
    beta = float(schedule.betas[i])
    s = math.sqrt(1.0 - beta)
    if v == 0.0:  # t = 1: x^0 is known exactly
        return x0, 0.0
    precision = 1.0 / v + s * s / beta
    mean = (m / v + s * (xt - (1.0 - s) * y) / beta) / precision
    return mean, 1.0 / precision


@pytest.mark.parametrize("schedule", [SCHEDULE, SCHEDULE.respaced(25)], ids=["full", "respaced25"])
def test_eq15_posterior_matches_bayes_rule(schedule):
    g = torch.Generator().manual_seed(1)
    x0, xt, y = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(3))
    for i in [0, 1, 2, schedule.T // 3, schedule.T // 2, schedule.T - 1]:
        mean, var = posterior_moments(schedule, i, x0, xt, y)
        ref_mean, ref_var = _bayes_posterior(schedule, i, x0, xt, y)
        assert torch.allclose(mean, ref_mean, rtol=1e-9, atol=1e-9), i
        assert var == pytest.approx(ref_var, rel=1e-9, abs=1e-12), i


def test_eq15_gamma2_closed_form_and_the_printed_typo():
    c = posterior_coefficients(SCHEDULE)
    assert torch.allclose(c["gamma2"], 1.0 - c["gamma0"] - c["gamma1"], atol=1e-12)
    # main text's Eq. 15 writes sqrt(bar-alpha^t) - 1 in the first factor: a different (wrong) number
    beta, a = SCHEDULE.betas, SCHEDULE.alpha
    a_prev = torch.cat([torch.ones(1, dtype=a.dtype), a[:-1]])
    printed = 1.0 + (torch.sqrt(1 - beta) - 1.0) * (torch.sqrt(1 - beta) + torch.sqrt(a_prev)) / (1.0 - a)
    assert (printed - c["gamma2"]).abs().max() > 0.1


def _oracle(x0):
    def eps(xt, y, t):
        a = SCHEDULE.alpha[t - 1].to(xt).reshape(-1, 1, 1, 1)
        return (xt - torch.sqrt(a) * x0 - (1 - torch.sqrt(a)) * y) / torch.sqrt(1 - a)

    return eps


@pytest.mark.parametrize("steps", [1000, 50, 7])
@pytest.mark.parametrize("sigma", ["beta", "beta_tilde"])
def test_algorithm2_with_an_oracle_recovers_x0(steps, sigma):
    """With the true noise (computed from the true x^0 at the timestep the network is told), Algorithm 2
    returns x^0, on the full and on respaced schedules."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = lambda shape: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    rec = sample(_oracle(x0), y, SCHEDULE.respaced(steps), noise, sigma=sigma)
    assert torch.allclose(rec, x0, atol=1e-8)


def test_algorithm2_printed_x0_estimate_is_not_an_inverse():
    """The printed line 4 divides by alpha^t: from an exact x^t and the exact noise it misses x^0."""
    x0, y, eps = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.5])
    a = float(SCHEDULE.alpha[499])
    xt = math.sqrt(a) * x0 + (1 - math.sqrt(a)) * y + math.sqrt(1 - a) * eps
    assert torch.allclose(predict_x0(xt, y, eps, a), x0, atol=1e-6)
    printed = (xt - (1 - math.sqrt(a)) * y - math.sqrt(1 - a) * eps) / a
    assert (printed - x0).abs().item() > 0.5


def test_respacing_keeps_the_cumulative_products():
    r = SCHEDULE.respaced(10)
    assert r.T == 10 and int(r.timesteps[-1]) == 1000
    assert torch.allclose(r.alpha, SCHEDULE.alpha[r.timesteps - 1], rtol=1e-12)
    full = SCHEDULE.respaced(1000)
    assert torch.allclose(full.betas, SCHEDULE.betas, rtol=1e-9)
    with pytest.raises(ValueError, match="sampling steps"):
        SCHEDULE.respaced(0)
    with pytest.raises(ValueError, match="sampling steps"):
        SCHEDULE.respaced(1001)


def test_clamped_x0_estimate_stays_in_bounds_and_keeps_an_exact_oracle():
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(1, 2, 3, 3, generator=g, dtype=torch.float64) - 0.5  # inside [-0.5, 0.5]
    y = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = lambda shape: torch.randn(shape, generator=g, dtype=torch.float64)  # noqa: E731
    bounds = (torch.tensor(-0.5, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    rec = sample(_oracle(x0), y, SCHEDULE.respaced(10), noise, clip_x0=bounds)
    assert torch.allclose(rec, x0, atol=1e-8)
    wild = sample(lambda x, yy, t: torch.full_like(x, 50.0), y, SCHEDULE.respaced(10), noise, clip_x0=bounds)
    assert wild.abs().max() <= 0.5
