"""The AD-layout copy of the synthetic scene's structural anomalies reads back with the MVTec AD loader, with
each anomaly's mask equal to the union of its LOCO channels."""

import numpy as np
import pytest

from pradot.data import load_dataset
from pradot.fewshot.synthetic_ad import structural_ad_copy


def test_structural_ad_copy(tmp_path):
    loco = load_dataset(
        "synthetic",
        tmp_path / "loco",
        "screw_bag",
        generate=True,
        image_size=64,
        n_train=3,
        n_validation=1,
        n_test_good=2,
        n_test_logical=2,
        n_test_structural=4,
    )
    target = structural_ad_copy(tmp_path / "loco", tmp_path / "ad")
    ad = load_dataset("mvtec_ad", tmp_path / "ad", "screw_bag")
    assert len(ad.samples("train")) == 3
    test = ad.samples("test")
    assert sum(s.label == 0 for s in test) == 2 and sum(s.label == 1 for s in test) == 4
    assert {s.anomaly_type for s in test if s.label} <= {"scratch", "broken_part", "dent", "colour_blotch"}
    by_id = {s.image_id: s for s in loco.samples("test") if s.anomaly_type == "structural_anomalies"}
    for s in test:
        if s.label:
            expected = np.asarray(loco.load_channels(by_id[s.image_id]), bool).any(0)
            assert np.array_equal(np.asarray(ad.load_channels(s), bool)[0], expected) and expected.any()
    stamp = (target / ".pradot_synthetic_ad.json").stat().st_mtime_ns
    structural_ad_copy(tmp_path / "loco", tmp_path / "ad")  # same source: reused, not rewritten
    assert (target / ".pradot_synthetic_ad.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="generate it first"):
        structural_ad_copy(tmp_path / "nothing", tmp_path / "ad2")


def test_the_cli_generates_the_source_scene_first(tmp_path):
    from pradot.fewshot.synthetic_ad import GENERATED, main

    assert main(["--generate", "64", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "ad")]) == 0
    ad = load_dataset("mvtec_ad", tmp_path / "ad", "screw_bag")
    assert len(ad.samples("train")) == GENERATED["n_train"]
    assert sum(s.label for s in ad.samples("test")) == GENERATED["n_test_structural"]
