"""Tests of pradot.viz: the array helpers on constructed cases, and every figure on tiny inputs."""

import colorsys
import io
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.quiver import Quiver

from pradot import viz
from pradot.cost import fused_cost
from pradot.model import EpochStats
from pradot.prototypes import BankConfig, PrototypeBank
from pradot.scoring import assignment_scores


def _bank(grid=(4, 4), dim=8, n=1, alpha=0.2, image_size=32):
    cfg = BankConfig(stage=2, alpha=alpha, n=n, grid=grid, dim=dim, backbone="tiny_random", image_size=image_size)
    return PrototypeBank(cfg, seed=0)


def _renders(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ array helpers


def test_block_edges_floor_rounding():
    assert viz.block_edges(20, 4).tolist() == [0, 5, 10, 15, 20]
    assert viz.block_edges(22, 4).tolist() == [0, 6, 11, 16, 22]  # round(i * 5.5), half to even
    with pytest.raises(ValueError):
        viz.block_edges(3, 4)


def test_heatmap_rgb_shape_dtype_and_monotonic_colour():
    amap = np.linspace(0.0, 1.0, 64).reshape(8, 8)
    rgb = viz.heatmap_rgb(amap, 0.0, 1.0)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    flat = rgb.reshape(-1, 3) / 255.0
    hues = np.array([colorsys.rgb_to_hsv(*c)[0] for c in flat])  # jet: blue (2/3) -> red (0)
    assert np.all(np.diff(hues) <= 1e-6) and hues[0] > 0.6 and hues[-1] < 0.05
    # perceptual map: lightness increases with the value
    inf = viz.heatmap_rgb(amap, 0.0, 1.0, cmap="inferno").reshape(-1, 3).astype(float)
    lum = inf @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(lum) >= -1.0) and lum[-1] > lum[0] + 150
    # clipping outside [vmin, vmax] and non-finite values drawn as vmin
    out = viz.heatmap_rgb(np.array([[-5.0, 0.0, np.nan], [1.0, 7.0, 0.5]]), 0.0, 1.0)
    assert (out[0, 0] == out[0, 1]).all() and (out[0, 2] == out[0, 1]).all() and (out[1, 0] == out[1, 1]).all()
    # constant scale (vmin == vmax) does not divide by zero
    assert viz.heatmap_rgb(np.ones((2, 2)), 1.0, 1.0).shape == (2, 2, 3)


def test_heatmap_rgb_blends_with_image():
    img = np.full((4, 5, 3), 200, np.uint8)
    amap = np.zeros((4, 5))
    assert (viz.heatmap_rgb(amap, 0, 1, image=img, alpha=0.0) == 200).all()
    pure = viz.heatmap_rgb(amap, 0, 1)
    assert (viz.heatmap_rgb(amap, 0, 1, image=img / 255.0, alpha=1.0) == pure).all()
    half = viz.heatmap_rgb(amap, 0, 1, image=img, alpha=0.5).astype(int)
    assert np.abs(half - (pure.astype(int) + 200) / 2).max() <= 1
    with pytest.raises(ValueError, match="sizes differ"):
        viz.heatmap_rgb(np.zeros((3, 3)), 0, 1, image=img)


def test_prototype_patches_picks_the_exact_block(tmp_path):
    rng = np.random.default_rng(0)
    N, D, H, W, S = 5, 6, 4, 4, 20  # 5x5 blocks
    feats = rng.standard_normal((N, D, H, W)).astype(np.float32)
    images = rng.integers(0, 256, (N, S, S, 3), dtype=np.uint8)
    bank = _bank(grid=(H, W), dim=D)
    # prototype 5 := 3 x the embedding of image 2, cell (1, 3); prototype 11 := embedding of image 4, cell (3, 0)
    bank.features[5] = torch.from_numpy(3.0 * feats[2, :, 1, 3])
    bank.features[11] = torch.from_numpy(feats[4, :, 3, 0])
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=feats.shape)
    mm[:] = feats
    calls = []

    def get_image(i):
        calls.append(i)
        return images[i]

    mm.flush()
    readonly = np.load(tmp_path / "f.npy", mmap_mode="r")  # as the feature cache hands them out
    outs = [
        viz.prototype_patches(bank, feats, images, return_index=True),
        viz.prototype_patches(bank, torch.from_numpy(feats), get_image, chunk=1, return_index=True),
        viz.prototype_patches(bank, mm, list(images), chunk=2, return_index=True),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        outs.append(viz.prototype_patches(bank, readonly, images, chunk=2, return_index=True))
    for patches, (img_i, cell_i, sim) in outs:
        assert patches.shape == (bank.n_prototypes, 5, 5, 3) and patches.dtype == np.uint8
        assert (patches[5] == images[2][5:10, 15:20]).all()
        assert (patches[11] == images[4][15:20, 0:5]).all()
        assert img_i[5] == 2 and cell_i[5] == 1 * W + 3 and sim[5] == pytest.approx(1.0, abs=1e-5)
        # every prototype: the brute-force best (image, cell) and its block
        z = feats.transpose(0, 2, 3, 1).reshape(-1, D)
        p = bank.features.numpy()
        cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
        best = cos.argmax(0)
        assert (img_i * H * W + cell_i == best).all()
        for k in range(bank.n_prototypes):
            i, j = divmod(int(best[k] % (H * W)), W)
            assert (patches[k] == images[best[k] // (H * W)][5 * i : 5 * i + 5, 5 * j : 5 * j + 5]).all()
    assert set(calls) == set(outs[1][1][0].tolist())  # only the winning images were read


def test_prototype_patches_uneven_blocks():
    # S = 22 over 4 cells: blocks 6, 5, 5, 6 -> patches of 6x6, smaller blocks nearest-neighbour stretched
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    images = rng.integers(0, 256, (2, 22, 22, 3), dtype=np.uint8)
    bank = _bank(grid=(4, 4), dim=4)
    bank.features[0] = torch.from_numpy(feats[1, :, 0, 0])  # 6x6 block rows 0:6, cols 0:6
    bank.features[1] = torch.from_numpy(feats[1, :, 1, 2])  # 5x5 block rows 6:11, cols 11:16
    patches = viz.prototype_patches(bank, feats, images)
    assert patches.shape == (16, 6, 6, 3)
    assert (patches[0] == images[1][0:6, 0:6]).all()
    src = np.array([0, 0, 1, 2, 3, 4])
    assert (patches[1] == images[1][6:11, 11:16][src][:, src]).all()


def test_restore_image_places_assigned_patches():
    H, W, ph, pw = 2, 3, 6, 4
    P = 4
    patches = np.zeros((P, ph, pw, 3), np.uint8)
    patches[..., 0] = (np.arange(P) * 50)[:, None, None]
    patches[..., 1] = np.arange(ph)[None, :, None] * 10
    patches[..., 2] = np.arange(pw)[None, None, :] * 20
    assignment = torch.tensor([[3, 0, 1, 2, 2, 0]])  # (1, H*W), as from assignment_scores
    out = viz.restore_image(assignment, patches, (H, W), (12, 12))
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8
    a = assignment.reshape(H, W).numpy()
    for i in range(H):
        for j in range(W):
            assert (out[6 * i : 6 * i + 6, 4 * j : 4 * j + 4] == patches[a[i, j]]).all(), (i, j)
    with pytest.raises(ValueError):
        viz.restore_image([0, 1], patches, (H, W), 12)
    with pytest.raises(ValueError):
        viz.restore_image([0, 1, 2, 3, 4, 5], patches, (H, W), 12)


def test_restore_image_round_trip_with_uneven_blocks():
    # prototypes = the embeddings of one training image (orthogonal features) -> its own patches come back
    H, W, S = 2, 3, 13  # rows 6 | 7, cols 4 | 5 | 4
    feats = torch.eye(H * W).reshape(1, H * W, H, W)
    img = np.random.default_rng(2).integers(0, 256, (1, S, S, 3), dtype=np.uint8)
    bank = _bank(grid=(H, W), dim=H * W, alpha=0.3, image_size=S)
    bank.features.copy_(torch.eye(H * W))
    patches = viz.prototype_patches(bank, feats, img)
    assert patches.shape == (H * W, 7, 5, 3)
    _, idx = assignment_scores(bank, feats)
    assert idx[0].tolist() == list(range(H * W))
    assert (viz.restore_image(idx[0], patches, (H, W), S) == img[0]).all()


def test_abnormal_embeddings_threshold():
    mask = np.zeros((20, 20), bool)  # grid 2x2 -> 10x10 = 100-pixel patches
    mask[0:3, 0:10] = True  # cell (0, 0): exactly 30 %
    mask[0:3, 10:20] = True
    mask[3, 10] = True  # cell (0, 1): 31 %
    mask[10:20, 10:20] = True  # cell (1, 1): 100 %
    assert viz.abnormal_embeddings(mask, (2, 2)).tolist() == [False, True, False, True]
    assert viz.abnormal_embeddings(mask, (2, 2), threshold=0.0).tolist() == [True, True, False, True]
    chans = np.stack([mask, np.zeros_like(mask)])
    chans[1, 10:14, 0:10] = True  # cell (1, 0): 40 % in a second channel
    assert viz.abnormal_embeddings(chans, (2, 2)).tolist() == [False, True, True, True]
    uneven = np.zeros((22, 22), bool)
    uneven[0:6, 0:2] = True  # 12 of the 6x6 = 36 pixels of cell (0, 0) (33 %)
    assert viz.abnormal_embeddings(uneven, (4, 4))[0] and viz.abnormal_embeddings(uneven, (4, 4)).sum() == 1


def test_position_colors_distinct_corners():
    c = viz.position_colors(np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0.5, 0.5]]))
    assert c.shape == (5, 3) and (c >= 0).all() and (c <= 1).all()
    assert len({tuple(np.round(x, 3)) for x in c}) == 5


# ------------------------------------------------------------------ figures


def test_overlay_figure_axes_scale_and_contours():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    maps = [rng.random((16, 16)), rng.random((4, 4)) + 2.0, torch.rand(16, 16)]  # a coarse map is stretched
    mask = np.zeros((16, 16), bool)
    mask[4:9, 4:9] = True
    fig = viz.overlay_figure(images, maps, titles=["a", "b", "c"], masks=[None, mask, None])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # 3 panels + colour bar
    lo = min(float(m.min()) for m in maps)
    hi = max(float(m.max()) for m in maps)
    for ax in fig.axes[:3]:
        assert len(ax.images) == 2
        assert ax.images[1].get_clim() == pytest.approx((lo, hi))
        assert ax.images[1].get_extent() == pytest.approx([-0.5, 15.5, 15.5, -0.5])
    assert [len(ax.collections) > 0 for ax in fig.axes[:3]] == [False, True, False]  # the contour
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    fig5 = viz.overlay_figure(list(images) + list(images[:2]), [maps[0]] * 5, vmin=0, vmax=1)
    assert len(fig5.axes) == 6 and fig5.axes[0].images[1].get_clim() == (0, 1)
    _renders(fig)


def test_assignment_figure_arrows_and_dots():
    H, W = 4, 5
    bank = _bank(grid=(H, W), dim=H * W, alpha=0.2, image_size=40)
    bank.features.copy_(torch.eye(H * W))  # prototype k = e_k at cell k
    feats = torch.eye(H * W).reshape(H * W, H, W).clone()
    moved = {0: 19, 7: 12, 13: 2}  # cell -> the (distant) prototype whose feature it carries
    for cell, proto in moved.items():
        i, j = divmod(cell, W)
        feats[:, i, j] = torch.eye(H * W)[proto]
    feats = feats[None]
    image = np.full((40, 40, 3), 128, np.uint8)
    fig = viz.assignment_figure(image, bank, feats)
    info = fig.pradot_info
    assert info["assignment"].tolist() == [moved.get(c, c) for c in range(H * W)]
    assert info["n_arrows"] == 3 and info["n_dots"] == H * W - 3
    ax = fig.axes[0]
    quivers = [c for c in ax.collections if isinstance(c, Quiver)]
    assert len(quivers) == 1 and quivers[0].N == 3
    dots = [c for c in ax.collections if not isinstance(c, Quiver)]
    assert len(dots) == 1 and len(dots[0].get_offsets()) == H * W - 3
    # arrows go from the cell's pixel centre to the prototype cell's centre (10 rows x 8 columns per cell)
    q = quivers[0]

    def centre(c):  # (x, y)
        return np.array([(c % W) * 8 + 3.5, (c // W) * 10 + 4.5])

    for k, (cell, proto) in enumerate(sorted(moved.items())):
        assert q.X[k] == pytest.approx(centre(cell)[0]) and q.Y[k] == pytest.approx(centre(cell)[1])
        assert (q.U[k], q.V[k]) == pytest.approx(tuple(centre(proto) - centre(cell)))
    scores, _ = assignment_scores(bank, feats)
    assert np.allclose(info["scores"], scores[0].numpy())
    assert len(fig.axes) == 2  # image + colour bar
    _renders(fig)


def test_assignment_figure_with_several_prototypes_per_cell():
    bank = _bank(grid=(3, 3), dim=5, n=2, alpha=0.5, image_size=24)
    feats = torch.rand(1, 5, 3, 3)
    fig = viz.assignment_figure(np.zeros((24, 24, 3)), bank, feats, title="t", show_map=True)
    info = fig.pradot_info
    assert info["n_arrows"] + info["n_dots"] == 9 and info["assignment"].max() < 18
    assert fig.axes[0].get_title() == "t"


def test_prototype_figure_layouts():
    rng = np.random.default_rng(0)
    p1 = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    fig = viz.prototype_figure(p1, (3, 4), 1)
    mosaic = fig.axes[0].images[0].get_array()
    assert len(fig.axes) == 1 and mosaic.shape == (3 * 4, 4 * 4, 3)
    assert (mosaic[4:8, 12:16] == p1[1 * 4 + 3]).all()  # prototype of cell (1, 3) at its place
    p8 = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    mosaic = viz.prototype_figure(p8, (3, 4), 1).axes[0].images[0].get_array()
    assert mosaic.shape == (3 * 8 + 2, 4 * 8 + 3, 3) and (mosaic[9:17, 27:35] == p8[7]).all()  # 1-px gaps
    p3 = rng.integers(0, 256, (36, 4, 4, 3), dtype=np.uint8)
    fig = viz.prototype_figure(p3, (3, 4), 3, max_cells=4)
    assert len(fig.axes) == 4
    row = fig.axes[0].images[0].get_array()
    assert row.shape == (4, 3 * 4 + 2, 3)
    # the row of cell c shows prototypes c, c + 12, c + 24
    c = int(fig.axes[0].get_ylabel().strip("()").split(",")[0]) * 4 + int(
        fig.axes[0].get_ylabel().strip("()").split(",")[1]
    )
    assert (row[:, 0:4] == p3[c]).all() and (row[:, 5:9] == p3[c + 12]).all() and (row[:, 10:14] == p3[c + 24]).all()
    assert len(viz.prototype_figure(p3, (3, 4), 3, max_cells=50).axes) == 12
    assert len(viz.prototype_figure(p1[:4], (4, 4), 0.5).axes) == 1  # n < 1: 2x2 coarse grid
    with pytest.raises(ValueError):
        viz.prototype_figure(p1, (3, 4), 2)
    _renders(fig)


def test_restoration_figure_axes():
    imgs = np.zeros((2, 8, 8, 3), np.uint8)
    fig = viz.restoration_figure(imgs, imgs + 100, maps=np.random.rand(2, 8, 8))
    assert len(fig.axes) == 2 * 3 + 1
    assert [a.get_title() for a in fig.axes[:3]] == ["original", "restored", "anomaly map"]
    assert len(viz.restoration_figure(imgs, imgs).axes) == 4
    _renders(fig)


def _umap_inputs(seed=0, n=40, p=12, d=6):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)).astype(np.float32)
    z[3] = 0.0  # a zero-norm feature: its self-cost must still be 0
    c = rng.random((n, 2)).astype(np.float32)
    ab = np.zeros(n, bool)
    ab[[1, 5, 9, n - 10]] = True
    return z, c, ab, rng.standard_normal((p, d)).astype(np.float32), rng.random((p, 2)).astype(np.float32)


@pytest.fixture()
def fake_umap(monkeypatch):
    """A stand-in umap module that records what UMAP is given (the real one is exercised below)."""
    seen = {}

    class UMAP:
        def __init__(self, **kw):
            seen["kwargs"] = kw

        def fit_transform(self, X):
            seen["X"] = np.array(X)
            return np.random.default_rng(0).standard_normal((len(X), 2))

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=UMAP))
    return seen


@pytest.mark.parametrize("squared", [True, False])
def test_umap_figure_uses_the_fused_cost(fake_umap, squared):
    z, c, ab, p, rho = _umap_inputs()
    fig = viz.umap_figure(z, c, ab, p, rho, alpha=0.3, squared=squared)
    X = fake_umap["X"]
    assert fake_umap["kwargs"]["metric"] == "precomputed"
    assert X.shape == (52, 52)
    assert np.allclose(X, X.T) and (np.diag(X) == 0).all() and (X >= 0).all()

    def t(a):
        return torch.as_tensor(a, dtype=torch.float64)

    block = fused_cost(t(z), t(c), t(p), t(rho), 0.3, squared=squared).numpy()
    assert np.allclose(X[:40, 40:], block)
    zz = fused_cost(t(z), t(c), t(z), t(c), 0.3, squared=squared).numpy()
    off = ~np.eye(40, dtype=bool)
    assert np.allclose(X[:40, :40][off], zz[off])
    ax = fig.axes[0]
    assert len(ax.collections) == 3
    assert [len(col.get_offsets()) for col in ax.collections] == [36, 4, 12]
    assert [col.get_paths()[0] is not None for col in ax.collections] == [True] * 3
    _renders(fig)


def test_umap_figure_subsamples_deterministically(fake_umap):
    z, c, ab, p, rho = _umap_inputs(n=300, p=100)
    f1 = viz.umap_figure(z, c, ab, p, rho, alpha=0.5, max_points=80, seed=3)
    X = fake_umap["X"]
    f2 = viz.umap_figure(z, c, ab, p, rho, alpha=0.5, max_points=80, seed=3)
    i1, i2 = f1.pradot_info, f2.pradot_info
    assert X.shape == (80, 80)
    assert len(i1["embedding_index"]) == 60 and len(i1["prototype_index"]) == 20
    assert (i1["embedding_index"] == i2["embedding_index"]).all()
    assert (i1["prototype_index"] == i2["prototype_index"]).all()
    assert ab[i1["embedding_index"]].sum() == 4  # the rare abnormal embeddings are kept

    def t(a):
        return torch.as_tensor(a, dtype=torch.float64)

    e, q = i1["embedding_index"], i1["prototype_index"]
    assert np.allclose(X[:60, 60:], fused_cost(t(z[e]), t(c[e]), t(p[q]), t(rho[q]), 0.5).numpy())
    f3 = viz.umap_figure(z, c, ab, p, rho, alpha=0.5, max_points=80, seed=4)
    assert not (f3.pradot_info["embedding_index"] == e).all()


@pytest.mark.slow  # numba compiles UMAP's kernels in every new process: 20-45 s on two shared cores
def test_umap_figure_real_umap():
    pytest.importorskip("umap")
    z, c, ab, p, rho = _umap_inputs(n=30, p=10)
    fig = viz.umap_figure(z, c, ab, p, rho, alpha=0.5, n_neighbors=5)
    proj = fig.pradot_info["projection"]
    assert proj.shape == (40, 2) and np.isfinite(proj).all()
    assert len(fig.axes[0].collections) == 3


def test_roc_figure_legend_auroc():
    from sklearn.metrics import roc_auc_score

    y = np.array([0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9, 0.7])
    fig = viz.roc_figure(y, s, {"logical": (y[:5], s[:5]), "only good": (y[:3], s[:3])})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == f"all: AUROC {roc_auc_score(y, s):.3f}"
    assert labels[1] == f"logical: AUROC {roc_auc_score(y[:5], s[:5]):.3f}"
    assert "undefined" in labels[2]
    assert len(ax.get_lines()) == 4  # all, logical, empty placeholder, chance diagonal
    _renders(fig)


def test_pro_figure_limit_line_and_area():
    from pradot.metrics import area_under_curve

    fpr = np.linspace(0, 1, 21)
    fig = viz.pro_figure({"logical": (fpr, np.sqrt(fpr)), "structural": (fpr, fpr)}, max_fpr=0.3)
    ax = fig.axes[0]
    vlines = [ln for ln in ax.get_lines() if np.allclose(ln.get_xdata(), 0.3) and len(set(ln.get_xdata())) == 1]
    assert len(vlines) == 1
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].endswith(f"{area_under_curve(fpr, np.sqrt(fpr), 0.3):.3f}")
    assert ax.get_xlim() == pytest.approx((0, 0.45)) and ax.get_ylabel() == "sPRO"
    _renders(fig)


def test_training_curves_figure():
    hist = [EpochStats(e, {2: 1.0 / e, 3: 2.0 / e}, {2: 0.5 / e, 3: 0.1 / e}, 1.0, 0.5, 0.5) for e in (1, 2, 3)]
    fig = viz.training_curves_figure(hist)
    assert len(fig.axes) == 2
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    assert list(fig.axes[0].get_lines()[1].get_ydata()) == pytest.approx([2.0, 1.0, 2 / 3])
    assert fig.axes[1].get_yscale() == "log"
    _renders(fig)
    assert len(viz.training_curves_figure([]).axes) == 2


def test_import_is_light():
    code = (
        "import sys, pradot.viz; bad = [m for m in ('mlflow', 'ray', 'matplotlib.pyplot', 'umap') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_jet_table_is_matplotlibs_without_matplotlib():
    """The served heat map's colours (built from jet's segment data, no matplotlib) are matplotlib's to the bit,
    and other colour maps still come from matplotlib."""
    from matplotlib import colormaps

    from pradot.viz.heatmap import colour_table

    for name in ("jet", "viridis"):
        cm = colormaps[name]
        np.testing.assert_array_equal(colour_table(name), cm(np.arange(cm.N))[:, :3])
    with pytest.raises(ValueError, match="unknown colour map"):
        colour_table("no-such-map")


def test_heatmap_path_imports_no_matplotlib():
    code = (
        "import sys, pradot.viz.heatmap, pradot.explain; from pradot.viz import heatmap_rgb; "
        "heatmap_rgb([[0.0, 1.0]], 0.0, 1.0); assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
