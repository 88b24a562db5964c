"""The vague-conditioned diffusion of VPDM (``vpdm-paper.md`` Sec. 3.2, Eq. 12-15, Algorithm 2).

Notation of the paper: ``beta[t]`` the noise schedule, ``alpha_bar[t] = 1 - beta[t]`` (the paper's
bar-alpha, one step) and ``alpha[t] = prod_{i<=t} (1 - beta[i])`` (the paper's alpha, the cumulative
product). Timesteps are 1-based as in the paper; arrays here are indexed ``t - 1``.

**One derivation for every formula.** With ``z = x - y_hat``, Eq. 13 reads
``q(z^t | z^{t-1}) = N(sqrt(1 - beta^t) z^{t-1}, beta^t I)``: it is DDPM (Ho et al. 2020) on ``z``. Hence

* Eq. 14: ``q(x^t | x^0, y_hat) = N(sqrt(alpha^t) x^0 + (1 - sqrt(alpha^t)) y_hat, (1 - alpha^t) I)``. The
  paper prints the variance ``(1 - sqrt(alpha^t))``; the moment test (iterating Eq. 13) gives ``1 - alpha^t``,
  which is also what Appendix A's derivation of Eq. 15 uses.
* Eq. 15: the posterior is DDPM's posterior on ``z`` shifted by ``y_hat``, so ``gamma_2 = 1 - gamma_0 -
  gamma_1``; Appendix A's closed form ``1 + (sqrt(alpha^t) - 1)(sqrt(alpha_bar^t) + sqrt(alpha^{t-1})) /
  (1 - alpha^t)`` equals it; the main text's Eq. 15 prints ``sqrt(alpha_bar^t)`` in the first factor (a typo).
* Algorithm 2, line 4: the estimate of ``x^0`` from ``x^t`` divides by ``sqrt(alpha^t)`` (inverting Eq. 14),
  not by ``alpha^t`` as printed.
* Eq. 12: as ``alpha^T -> 0``, Eq. 14 tends to ``N(y_hat, I)``, the vague endpoint.

Respacing (fewer sampling steps than ``T``, Nichol & Dhariwal 2021, Sec. 4): the chain on ``z`` restricted to
timesteps ``tau_1 < ... < tau_S`` is again DDPM with ``beta'_i = 1 - alpha^{tau_i} / alpha^{tau_{i-1}}``, so the
same formulas hold with the respaced schedule; the network still sees the original timestep ``tau_i``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "NoiseSchedule",
    "linear_betas",
    "forward_step_mean",
    "marginal_moments",
    "q_sample",
    "posterior_coefficients",
    "posterior_moments",
    "predict_x0",
    "sample",
]

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The linear schedule ``beta^1..beta^T`` of Ho et al. 2020 (the paper's appendix D: T = 1000,
    1e-4 .. 0.02): (T,) float64.

    Raises:
        ValueError: ``timesteps`` < 1 or betas outside (0, 1) or decreasing.
    """
    if int(timesteps) < 1:
        raise ValueError(f"timesteps must be >= 1 (paper: 1000), got {timesteps!r}")
    if not (0.0 < beta_start <= beta_end < 1.0):
        raise ValueError(f"need 0 < beta_start <= beta_end < 1 (paper: 1e-4, 0.02), got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, int(timesteps), dtype=torch.float64)


@dataclass(frozen=True)
class NoiseSchedule:
    """A (possibly respaced) schedule: ``betas`` (S,) float64 and the original 1-based ``timesteps`` (S,) the
    network is told (``timesteps[i]`` is the step whose cumulative product is ``alpha[i]``)."""

    betas: torch.Tensor
    timesteps: torch.Tensor

    @classmethod
    def linear(cls, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """The full linear schedule (:func:`linear_betas`)."""
        betas = linear_betas(timesteps, beta_start, beta_end)
        return cls(betas, torch.arange(1, len(betas) + 1))

    @property
    def T(self) -> int:
        return int(self.betas.numel())

    @property
    def alpha_bar(self) -> torch.Tensor:
        """The paper's bar-alpha^t = 1 - beta^t (one step): (S,)."""
        return 1.0 - self.betas

    @property
    def alpha(self) -> torch.Tensor:
        """The paper's alpha^t = prod_{i<=t} (1 - beta^i) (cumulative): (S,)."""
        return torch.cumprod(1.0 - self.betas, 0)

    def respaced(self, steps: int) -> NoiseSchedule:
        """``steps`` evenly spaced timesteps of this schedule (always ending at ``T``), with
        ``beta'_i = 1 - alpha^{tau_i} / alpha^{tau_{i-1}}`` (module docstring).

        Raises:
            ValueError: ``steps`` not in 1..T.
        """
        steps = int(steps)
        if not 1 <= steps <= self.T:
            raise ValueError(f"sampling steps must lie in 1..{self.T} (the training timesteps), got {steps}")
        idx = torch.linspace(self.T - 1, 0, steps, dtype=torch.float64).round().long().flip(0).unique()
        a = self.alpha[idx]
        prev = torch.cat([torch.ones(1, dtype=a.dtype), a[:-1]])
        return NoiseSchedule(1.0 - a / prev, self.timesteps[idx])


def _bcast(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.ndim - 1))) if v.ndim else v


def forward_step_mean(x_prev: torch.Tensor, y_hat: torch.Tensor, beta_t) -> torch.Tensor:
    """Eq. 13: the mean ``mu_1 = sqrt(1 - beta^t) x^{t-1} + (1 - sqrt(1 - beta^t)) y_hat`` of
    ``q(x^t | x^{t-1}, y_hat)`` (its variance is ``beta^t``). Shapes: (B, ...) and a scalar or (B,) beta."""
    s = torch.sqrt(1.0 - _bcast(beta_t, x_prev))
    return s * x_prev + (1.0 - s) * y_hat


def marginal_moments(x0: torch.Tensor, y_hat: torch.Tensor, alpha_t) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 14 (derived from Eq. 13, module docstring): mean ``sqrt(alpha^t) x^0 + (1 - sqrt(alpha^t)) y_hat``
    and variance ``1 - alpha^t`` (not the printed ``1 - sqrt(alpha^t)``) of ``q(x^t | x^0, y_hat)``;
    ``alpha_t`` is the cumulative product, a scalar or (B,)."""
    a = _bcast(alpha_t, x0)
    return torch.sqrt(a) * x0 + (1.0 - torch.sqrt(a)) * y_hat, (1.0 - a) * torch.ones_like(x0)


def q_sample(x0: torch.Tensor, y_hat: torch.Tensor, alpha_t, noise: torch.Tensor) -> torch.Tensor:
    """A draw of Eq. 14: ``x^t = sqrt(alpha^t) x^0 + (1 - sqrt(alpha^t)) y_hat + sqrt(1 - alpha^t) noise``
    (Algorithm 1's noisy input); ``noise`` ~ N(0, I) of ``x0``'s shape."""
    mean, var = marginal_moments(x0, y_hat, alpha_t)
    return mean + torch.sqrt(var) * noise


def posterior_coefficients(schedule: NoiseSchedule) -> dict[str, torch.Tensor]:
    """Eq. 15: ``gamma_0``, ``gamma_1``, ``gamma_2`` and ``beta_tilde`` per step, each (S,) float64, so that
    ``q(x^{t-1} | x^0, x^t, y_hat) = N(gamma_0 x^0 + gamma_1 x^t + gamma_2 y_hat, beta_tilde I)``.

    gamma_0 = beta^t sqrt(alpha^{t-1}) / (1 - alpha^t); gamma_1 = (1 - alpha^{t-1}) sqrt(bar-alpha^t) / (1 - alpha^t);
    gamma_2 = 1 + (sqrt(alpha^t) - 1)(sqrt(bar-alpha^t) + sqrt(alpha^{t-1})) / (1 - alpha^t) (Appendix A; equals
    1 - gamma_0 - gamma_1); beta_tilde = (1 - alpha^{t-1}) beta^t / (1 - alpha^t); with alpha^0 = 1.
    """
    beta, a = schedule.betas, schedule.alpha
    a_prev = torch.cat([torch.ones(1, dtype=a.dtype), a[:-1]])
    one_minus = 1.0 - a
    g0 = beta * torch.sqrt(a_prev) / one_minus
    g1 = (1.0 - a_prev) * torch.sqrt(1.0 - beta) / one_minus
    g2 = 1.0 + (torch.sqrt(a) - 1.0) * (torch.sqrt(1.0 - beta) + torch.sqrt(a_prev)) / one_minus
    return {"gamma0": g0, "gamma1": g1, "gamma2": g2, "beta_tilde": (1.0 - a_prev) * beta / one_minus}


def posterior_moments(
    schedule: NoiseSchedule, i: int, x0: torch.Tensor, xt: torch.Tensor, y_hat: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Eq. 15 at the 0-based step ``i`` of ``schedule``: the mean (x0's shape) and the variance (a float)."""
    c = posterior_coefficients(schedule)
    mean = float(c["gamma0"][i]) * x0 + float(c["gamma1"][i]) * xt + float(c["gamma2"][i]) * y_hat
    return mean, float(c["beta_tilde"][i])


def predict_x0(xt: torch.Tensor, y_hat: torch.Tensor, eps: torch.Tensor, alpha_t) -> torch.Tensor:
    """Algorithm 2, line 4, inverted from Eq. 14: ``X^t = (x^t - (1 - sqrt(alpha^t)) y_hat - sqrt(1 - alpha^t)
    eps) / sqrt(alpha^t)`` (the paper prints ``1 / alpha^t``; see the module docstring)."""
    a = _bcast(alpha_t, xt)
    return (xt - (1.0 - torch.sqrt(a)) * y_hat - torch.sqrt(1.0 - a) * eps) / torch.sqrt(a)


@torch.no_grad()
def sample(
    eps_model: EpsModel,
    y_hat: torch.Tensor,
    schedule: NoiseSchedule,
    noise: Callable[[tuple[int, ...]], torch.Tensor],
    sigma: str = "beta",
    y_process: torch.Tensor | None = None,
    clip_x0: tuple[torch.Tensor, torch.Tensor] | None = None,
    x_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Algorithm 2: ``x^T ~ N(y_hat, I)`` (Eq. 12), then for the schedule's steps from last to first the
    estimate ``X^t`` (:func:`predict_x0`) and ``x^{t-1} = gamma_0 X^t + gamma_1 x^t + gamma_2 y_hat + sigma_t
    eps``; the last step returns ``X^1``.

    Args:
        eps_model: ``eps_theta(x_t, y_hat, t)`` with ``t`` a (B,) long tensor of original timesteps.
        y_hat: (B, C, H, W) vague condition.
        schedule: the (respaced) schedule to run.
        noise: ``noise(shape)`` -> standard normal draws (lets the caller fix the randomness per image).
        sigma: ``"beta"`` (Algorithm 2: sqrt(beta^t)) or ``"beta_tilde"`` (the posterior's own variance).
        y_process: the condition in the process equations when it differs from the network's (the "DDPM
            instead of the vague endpoint" ablation passes zeros); default ``y_hat``.
        clip_x0: ``(low, high)`` bounds broadcastable to ``y_hat`` that clamp ``X^t`` (DDPM clamps images to
            [-1, 1]; None: no clamp, as the paper prints Algorithm 2).
        x_start: the chain's start at the schedule's last timestep instead of a draw of ``N(y_hat, I)`` (a
            partially noised ``x^t0`` drawn by Eq. 14 from the image's own features; None: Algorithm 2).
    Returns:
        the reconstruction ``x^0_rec``, ``y_hat``'s shape.
    """
    if sigma not in ("beta", "beta_tilde"):
        raise ValueError(f"sigma must be 'beta' (Algorithm 2) or 'beta_tilde', got {sigma!r}")
    yp = y_hat if y_process is None else y_process
    c = {k: v.tolist() for k, v in posterior_coefficients(schedule).items()}
    alpha, betas = schedule.alpha.tolist(), schedule.betas.tolist()
    var = betas if sigma == "beta" else c["beta_tilde"]
    B = y_hat.shape[0]
    x = yp + noise(tuple(y_hat.shape)).to(y_hat) if x_start is None else x_start
    for i in range(schedule.T - 1, -1, -1):
        t = torch.full((B,), int(schedule.timesteps[i]), dtype=torch.long, device=y_hat.device)
        x0 = predict_x0(x, yp, eps_model(x, y_hat, t), alpha[i])
        if clip_x0 is not None:
            x0 = torch.maximum(torch.minimum(x0, clip_x0[1]), clip_x0[0])
        if i == 0:
            return x0
        x = c["gamma0"][i] * x0 + c["gamma1"][i] * x + c["gamma2"][i] * yp
        x = x + math.sqrt(var[i]) * noise(tuple(y_hat.shape)).to(y_hat)
    return x  # pragma: no cover - the loop returns at i == 0
