"""Table 3's ablation rows (pradot.vpdm.ablation): each option changes what it should, checked against direct
computations (POT's Sinkhorn, brute-force nearest prototypes, Eq. 14 written out); the table's columns."""

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from pradot.backbone import load_backbone
from pradot.vpdm import ABLATIONS, VPDM, VPDMConfig
from pradot.vpdm.ablation import PAPER_TABLE3, ablation_rows, components, format_ablation_table

TINY = dict(
    backbone="tiny_random",
    stages=(0,),
    image_size=32,
    grid=8,
    downsample=2,
    n_prototypes=5,
    ot_iter=200,
    timesteps=50,
    sampling_steps=5,
    width=8,
    blocks=1,
    epochs=0,
)


def _model(row: str = "full") -> VPDM:
    torch.manual_seed(0)
    model = VPDM(VPDMConfig(**TINY).ablated(row), backbone=load_backbone("tiny_random", (0,)))
    with torch.no_grad():
        model.prototypes.copy_(torch.randn(5, model.channels, generator=torch.Generator().manual_seed(1)))
    return model


def _x0(model, b=2):
    return torch.randn(b, model.channels, 8, 8, generator=torch.Generator().manual_seed(2))


def _pot_condition(points: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """Eq. 10 with POT's plan: K_f T beta, (K_f, C)."""
    a, b = np.full(len(points), 1 / len(points)), np.full(len(beta), 1 / len(beta))
    plan = ot.sinkhorn(a, b, ot.dist(points, beta, metric="euclidean"), reg=eps, numItermax=100_000, stopThr=1e-12)
    return len(points) * plan @ beta


@pytest.mark.parametrize("row", ["full", "no_low_pass"])
def test_low_pass_step_decides_which_points_are_transported(row):
    model = _model(row)
    x0 = _x0(model).double()
    model.double()
    y_hat, _ = model.condition(x0)
    beta = model.prototypes.detach().numpy()
    for b in range(len(x0)):
        if row == "full":  # 2 x 2 block means, transported, then bilinear back to 8 x 8
            down = F.avg_pool2d(x0[b : b + 1], 2)[0]
            y = _pot_condition(down.flatten(1).T.numpy(), beta, 1.0).T.reshape(-1, 4, 4)
            ref = F.interpolate(torch.from_numpy(y)[None], (8, 8), mode="bilinear", align_corners=False)[0]
        else:  # every grid location transported, no resampling
            ref = torch.from_numpy(_pot_condition(x0[b].flatten(1).T.numpy(), beta, 1.0).T.reshape(-1, 8, 8))
        assert torch.allclose(y_hat[b], ref, atol=1e-6)


def test_no_ot_puts_each_location_on_its_nearest_prototype():
    model = _model("no_ot")
    x0 = _x0(model)
    y_hat, _ = model.condition(x0)
    down = F.avg_pool2d(x0, 2)  # (B, C, 4, 4)
    beta = model.prototypes.detach()
    for b in range(len(x0)):
        pts = down[b].flatten(1).T
        nearest = np.argmin(((pts[:, None, :] - beta[None]) ** 2).sum(-1).numpy(), axis=1)
        ref = beta[nearest].T.reshape(-1, 4, 4)
        up = F.interpolate(ref[None], (8, 8), mode="bilinear", align_corners=False)[0]
        assert torch.allclose(y_hat[b], up, atol=1e-5)
    assert model.config.ot_weight == 0.0  # Table 3's row 2 has no OT loss either


def test_vague_only_conditions_on_the_low_passed_features_without_prototypes():
    model = _model("vague_only")
    x0 = _x0(model)
    y_hat, l_ot = model.condition(x0)
    ref = F.interpolate(F.avg_pool2d(x0, 2), (8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(y_hat, ref, atol=1e-6) and float(l_ot) == 0.0
    model.training_loss(x0, torch.Generator().manual_seed(0))["loss"].backward()
    assert model.prototypes.grad is None or not model.prototypes.grad.any()


@pytest.mark.parametrize("row", ["full", "no_ot_loss"])
def test_ot_weight_decides_whether_the_ot_loss_enters_eq17(row):
    model = _model(row)
    losses = model.training_loss(_x0(model), torch.Generator().manual_seed(0))
    assert float(losses["ot"].detach()) != 0.0  # the OT loss is still measured
    expected = losses["eps"] + (losses["ot"] if row == "full" else 0.0)
    assert torch.allclose(losses["loss"], expected)


@pytest.mark.parametrize("row", ["full", "ddpm"])
def test_endpoint_decides_eq14_noising_and_the_pass_through(row):
    """Algorithm 1's eps loss rebuilt by hand: x^t = sqrt(a) x0 + (1 - sqrt(a)) e + sqrt(1 - a) noise with e =
    y_hat (Eq. 12-14) or 0 (DDPM), the prediction = network + sqrt(1 - a) (x^t - e)."""
    model = _model(row)
    x0 = _x0(model)
    losses = model.training_loss(x0, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(1, 51, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        y_hat, _ = model.condition(x0)
        e = y_hat if row == "full" else torch.zeros_like(y_hat)
        betas = torch.linspace(1e-4, 0.02, 50, dtype=torch.float64)
        a = torch.cumprod(1 - betas, 0)[t - 1].float().reshape(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a.sqrt()) * e + (1 - a).sqrt() * noise
        pred = model.denoiser(xt, y_hat, t) + (1 - a).sqrt() * (xt - e)
    assert float(losses["eps"].detach()) == pytest.approx(float(((pred - noise) ** 2).mean()), rel=1e-4)


def test_rows_are_table3_and_unknown_rows_are_refused():
    full = VPDMConfig(**TINY)
    expected = {  # Table 3: vague, prototype, OT, OT loss, endpoint
        "vague_only": (True, False, False, False, "N(y_hat, I)"),
        "no_ot": (True, True, False, False, "N(y_hat, I)"),
        "no_ot_loss": (True, True, True, False, "N(y_hat, I)"),
        "ddpm": (True, True, True, True, "N(0, I)"),
        "no_low_pass": (False, True, True, True, "N(y_hat, I)"),
        "full": (True, True, True, True, "N(y_hat, I)"),
    }
    assert set(expected) == set(ABLATIONS) | {"full"} == set(PAPER_TABLE3)
    for row, cols in expected.items():
        assert tuple(components(full.ablated(row)).values()) == cols
    with pytest.raises(ValueError, match="Table 3's rows: full, vague_only"):
        full.ablated("no_prototypes")
    rows = ablation_rows([("full", full, {"image_auroc": 0.9}), ("ddpm", full.ablated("ddpm"), {})])
    assert rows[0]["paper_image_auroc"] == pytest.approx(0.984) and rows[1]["image_auroc"] is None
    table = format_ablation_table(rows).splitlines()
    assert table[2] == "| full | ✓ | ✓ | ✓ | ✓ | N(y_hat, I) | 90.0 | - | 98.4 | 97.8 |"
