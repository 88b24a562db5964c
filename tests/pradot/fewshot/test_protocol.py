"""The few-shot protocol's pieces: seeded, nested support splits; fixed query orders; Table 3's variants;
metrics of a scored split; the summary's mean and std."""

import numpy as np
import pytest

from pradot.fewshot import FOCTConfig
from pradot.fewshot.protocol import (
    ablation_variants,
    fewshot_metrics,
    markdown_table,
    query_order,
    summarise,
    support_indices,
    variant_name,
)


def test_supports_are_seeded_nested_and_differ_between_splits():
    a = [support_indices(30, k, 0, seed=7) for k in (1, 2, 4)]
    assert set(a[0]) <= set(a[1]) <= set(a[2]) and [len(x) for x in a] == [1, 2, 4]
    assert np.array_equal(support_indices(30, 4, 0, seed=7), a[2])
    assert len({tuple(support_indices(30, 4, s, seed=7)) for s in range(10)}) == 10
    assert not np.array_equal(support_indices(30, 4, 0, seed=8), a[2])
    with pytest.raises(ValueError, match="shots"):
        support_indices(3, 4, 0)


def test_protocol_supports_are_disjoint_across_splits_when_train_is_large_enough():
    blocks = {k: [support_indices(40, k, s, seed=0, max_shots=4, splits=10) for s in range(10)] for k in (1, 2, 4)}
    for s in range(10):
        assert set(blocks[1][s]) <= set(blocks[2][s]) <= set(blocks[4][s])
    used = [int(i) for b in blocks[4] for i in b]
    assert len(used) == len(set(used)) == 40  # no image in two splits
    assert len({int(b[0]) for b in blocks[1]}) == 10
    # too few images for disjoint blocks: independent per-split draws
    assert np.array_equal(support_indices(30, 4, 3, seed=0, max_shots=4, splits=10), support_indices(30, 4, 3, seed=0))


def test_query_order_is_fixed_per_split():
    o = query_order(20, 1, seed=0)
    assert sorted(o.tolist()) == list(range(20)) and np.array_equal(o, query_order(20, 1, seed=0))
    assert not np.array_equal(o, query_order(20, 2, seed=0))
    assert query_order(5, 3, shuffle=False).tolist() == list(range(5))


def test_variants_are_table3_rows():
    cfg = FOCTConfig(backbone="efficientnet_lite0")
    assert [v.name for v in ablation_variants(cfg, True)] == ["vanilla", "ct", "oct", "foct"]
    vanilla = ablation_variants(cfg, True)[0].apply(cfg)
    assert (vanilla.distance, vanilla.online, vanilla.foreground) == ("linear", False, "none")
    assert [v.name for v in ablation_variants(cfg, False)] == ["foct"]
    assert variant_name(True, "none", "linear") == "linear-online-fg_none"
    assert variant_name(True, "sam", "learned") == "foct-sam"


def test_summary_mean_and_std_over_splits():
    rows = [
        {"variant": "foct", "shots": 1, "split": s, "image_auroc": v, "seconds_per_query": 0.1}
        for s, v in enumerate([0.7, 0.8, 0.9])
    ] + [{"variant": "foct", "shots": 2, "split": 0, "image_auroc": 0.5, "seconds_per_query": 0.2}]
    out = summarise(rows)
    assert [(r["variant"], r["shots"], r["splits"]) for r in out] == [("foct", 1, 3), ("foct", 2, 1)]
    assert out[0]["image_auroc_mean"] == pytest.approx(0.8)
    assert out[0]["image_auroc_std"] == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1))
    assert out[1]["image_auroc_std"] == 0.0
    table = markdown_table(out)
    assert "| foct | 1 | 3 | 80.0 ± 10.0 | 0.100 ± 0.000 |" in table and "pixel_auroc" not in table


def test_metrics_of_a_scored_split(tmp_path):
    """On the embedded (LOCO-style) data: every metric present, and a map equal to the ground truth scores
    perfectly at pixel level."""
    from pradot.data import load_dataset

    ds = load_dataset(
        "synthetic",
        tmp_path,
        "screw_bag",
        generate=True,
        image_size=64,
        n_train=2,
        n_validation=1,
        n_test_good=3,
        n_test_logical=2,
        n_test_structural=2,
    )
    test = ds.samples("test")
    masks = np.stack(
        [np.asarray(ds.load_channels(s, size=64), bool).any(0) if s.defects else np.zeros((64, 64), bool) for s in test]
    )
    maps = masks.astype(np.float32) + 0.01 * np.random.default_rng(0).random(masks.shape).astype(np.float32)
    scores = np.array([s.label for s in test], float) + 0.1
    m, notes = fewshot_metrics(ds, test, maps, scores)
    assert not notes
    assert m["image_auroc"] == 1.0 and m["image_f1_max"] == 1.0
    assert m["pixel_auroc"] == 1.0 and m["pixel_f1_max"] == 1.0
    assert {"au_spro_0.05", "image_auroc_logical_anomalies", "au_spro_0.05_structural_anomalies"} <= set(m)
    assert m["au_spro_0.05"] == pytest.approx(1.0)


def test_blank_or_missing_masks_skip_the_pixel_metrics_with_a_note():
    from types import SimpleNamespace

    class Blank:
        has_saturation = False

        def load_channels(self, sample, size=None):
            return np.zeros((len(sample.defects), size, size), bool)

    samples = [
        SimpleNamespace(label=0, defects=(), anomaly_type="good"),
        SimpleNamespace(label=1, defects=("d",), anomaly_type="bad"),
    ]
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    m, notes = fewshot_metrics(Blank(), samples, maps, np.array([0.1, 0.9]))
    assert m == {"image_auroc": 1.0, "image_f1_max": 1.0} and "all blank" in notes[0]
    samples[1] = SimpleNamespace(label=1, defects=(), anomaly_type="bad")
    m, notes = fewshot_metrics(Blank(), samples, maps, np.array([0.1, 0.9]))
    assert set(m) == {"image_auroc", "image_f1_max"} and "no ground-truth mask" in notes[0]
