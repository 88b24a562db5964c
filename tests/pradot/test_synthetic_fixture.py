"""The near-rigid synthetic LOCO scene ``fixture_plate`` (pradot.data.synthetic_fixture): LOCO layout, masks
and saturation, each logical rule, the pockets' play (near-rigid), determinism."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pradot.data import load_dataset
from pradot.data import synthetic as syn
from pradot.data import synthetic_fixture as fx

CAT = "fixture_plate"


def test_loco_layout_masks_saturation_and_determinism(tmp_path):
    small = dict(n_train=2, n_validation=1, n_test_good=1, n_test_logical=4, n_test_structural=4)
    folder = syn.generate(tmp_path / "a", CAT, seed=0, **small)
    ds = load_dataset("synthetic", tmp_path / "a", CAT)
    assert ds.has_saturation and len(ds.samples("train")) == 2 and len(ds.samples("validation")) == 1
    entries = {e["defect_name"]: e for e in json.loads((folder / "defects_config.json").read_text())}
    assert set(entries) == set(fx.DEFECTS)
    areas = fx.part_areas(128)
    meta = json.loads((folder / "metadata.json").read_text())
    kinds = set()
    for s in ds.samples("test"):
        if s.label == 0:
            assert s.defects == ()
            continue
        kinds.add(meta[s.relative_id]["anomaly"])
        for d, ch in zip(s.defects, ds.load_channels(s)):
            raw = np.asarray(Image.open(d.mask_path))
            assert set(np.unique(raw).tolist()) == {0, entries[d.defect_name]["pixel_value"]} and ch.sum() > 0
            if d.defect_name.startswith("missing_"):  # the pocket, saturated at the part's area
                assert not d.relative_saturation and d.saturation_threshold == areas[d.defect_name[8:]]
                assert ch.sum() > d.saturation_threshold
    assert kinds == set(fx.LOGICAL_KINDS) | set(fx.STRUCTURAL_KINDS)
    # the random stream of an image depends only on (seed, split, index): the same image again
    first = sorted((folder / "test" / "structural_anomalies").glob("*.png"))[0]
    image, _, _ = fx.render(fx.STRUCTURAL_KINDS[0], np.random.default_rng([0, 4, 0]), syn.Canvas(128))
    assert np.array_equal(np.asarray(Image.open(first)), image)


def test_parts_sit_in_their_pockets_with_a_pixel_of_play_and_each_rule_breaks_one_thing():
    """Normal parts: the pocket's type, within POS_JITTER of its centre, upright; each logical kind changes
    exactly what it says, with parts that look normal (no damage)."""
    canvas = syn.Canvas(128)
    centres = [fx.seat_center(s) for s in range(6)]

    def seat_of(p):
        d = [np.hypot(p.cx - x, p.cy - y) for x, y in centres]
        return int(np.argmin(d)), min(d)

    for i in range(10):
        normal = fx._normal_parts(np.random.default_rng([0, i]))
        for p in normal:
            s, dist = seat_of(p)
            assert p.ptype == fx.seat_type(s) and dist <= np.sqrt(2) * fx.POS_JITTER + 1e-9
            if p.is_screw:
                assert abs(p.angle - 90) <= fx.ANGLE_JITTER
        for kind in fx.LOGICAL_KINDS:
            parts, channels, info = fx._logical(kind, np.random.default_rng([1, i]), canvas)
            assert all(p.damage is None for p in parts) and all(m.any() for _, m in channels)
            loose = [p for p in parts if seat_of(p)[1] > 2 * fx.POS_JITTER]
            misfit = [p for p in parts if p not in loose and p.ptype != fx.seat_type(seat_of(p)[0])]
            reversed_ = [p for p in parts if p.is_screw and abs(p.angle - 270) <= fx.ANGLE_JITTER]
            counts = (len(parts), len(loose), len(misfit), len(reversed_))
            assert (
                counts
                == {
                    "missing_part": (5, 0, 0, 0),
                    "wrong_part": (6, 0, 1, 0),
                    "reversed_screw": (6, 0, 0, 1),
                    "extra_part": (7, 1, 0, 0),
                }[kind]
            ), (kind, counts)
