"""VPDM's figures (pradot.viz.vpdm): the feature colours are the principal components (against sklearn's PCA),
Fig. 2 and Fig. 3 draw one row per image and refuse mismatched inputs."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from pradot import viz


def _grid(seed, c=16, h=6, w=6):
    return np.random.default_rng(seed).normal(size=(c, h, w))


def test_feature_rgb_is_the_first_three_principal_components():
    x = _grid(0)
    (rgb,) = viz.feature_rgb([x])
    ref = PCA(3).fit_transform(x.reshape(16, -1).T)
    ours = rgb.reshape(-1, 3)
    for k in range(3):
        inside = (ours[:, k] > 0) & (ours[:, k] < 1)  # not clipped at the 1st / 99th percentile
        assert inside.sum() > 20
        assert abs(np.corrcoef(ours[inside, k], ref[inside, k])[0, 1]) > 0.9999
    other, again = viz.feature_rgb([_grid(1, h=3, w=3), x], basis=x)  # the basis's colours for every grid
    assert other.shape == (3, 3, 3) and np.allclose(again, rgb)
    with pytest.raises(ValueError, match="channels"):
        viz.feature_rgb([x, _grid(2, c=8)])


def test_fig2_and_fig3_draw_one_row_per_image():
    img = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[4:9, 4:9] = True
    x0, rec, down = [_grid(3), _grid(4)], [_grid(5), _grid(6)], [_grid(7, h=3, w=3), _grid(8, h=3, w=3)]
    maps = [np.random.default_rng(9).random((32, 32))] * 2
    fig = viz.reconstruction_figure([img, img], [img, img], x0, rec, maps, [mask, None], ["a", "b"])
    assert len(fig.axes) == 12 and fig.axes[1].get_title() == "a: image"
    fig = viz.vague_steps_figure([img, img], x0, down, rec, rec, [mask, None])
    assert len(fig.axes) == 12 and fig.axes[4].get_title() == "y_hat (VPOT)"
    with pytest.raises(ValueError, match="same number"):
        viz.reconstruction_figure([img], [img, img], x0, rec, maps)
