"""The embedded high-resolution category ``fine_weave`` (pradot.data.synthetic_hires): defects change exactly their
masks, they are a few pixels wide at 224 px, and the category loads through load_dataset like the textures."""

from __future__ import annotations

import numpy as np
import pytest

from pradot.data import load_dataset
from pradot.data import synthetic_hires as hires
from pradot.data import synthetic_texture as tex


@pytest.mark.parametrize("kind", hires.DEFECT_KINDS)
def test_defects_change_exactly_their_masks(kind):
    """Same stream without the defect: the image the defect was painted on, so every change lies in the mask."""
    for seed in range(3):
        normal, none = tex.render(hires.CATEGORY, "", np.random.default_rng([seed, 9]), 192)
        image, mask = tex.render(hires.CATEGORY, kind, np.random.default_rng([seed, 9]), 192)
        assert none is None and mask is not None and mask.shape == (192, 192)
        changed = np.any(image != normal, axis=-1)
        assert not (changed & ~mask).any() and changed[mask].mean() > 0.9


def test_defects_are_a_few_pixels_wide_at_224_and_scale_with_the_image():
    """At 224 px a pinhole is 2-3 px across (a few cells of a stride-8 feature grid would miss it); at 4x the side
    its area grows about 16x, so tiles of a large image see it large."""
    rng = np.random.default_rng
    for s in range(6):  # the same draws at both sizes: the same pinhole
        small, large = (int(hires.defect("pinhole", rng(s), size)[0].sum()) for size in (224, 896))
        assert 1 <= small <= 12 and 10 < large / small < 25  # ~16, up to pixel rounding
    with pytest.raises(ValueError, match="pinhole"):
        tex.render(hires.CATEGORY, "spot", rng(0), 128)


def test_loads_as_an_ad_layout_category(tmp_path):
    counts = dict(n_train=2, n_validation=1, n_test_good=1, n_test_logical=0, n_test_structural=3)
    ds = load_dataset("synthetic", tmp_path, hires.CATEGORY, generate=True, seed=1, image_size=96, **counts)
    test = ds.samples("test")
    assert sorted(s.anomaly_type for s in test) == ["fleck", "good", "pinhole", "snag"]
    assert len(ds.samples("validation")) == 1 and not ds.has_saturation
    bad = next(s for s in test if s.label == 1)
    assert ds.load_channels(bad, None).any()
