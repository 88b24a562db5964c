"""Calibration on too few normals: the rule n >= ceil(1 / (1 - q)) (so that n (1 - q) >= 1 normal is expected
above the q-quantile threshold), a warning that says how many normals the quantile needs, and the sample
size recorded in every saved calibration."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pradot.calibration import Calibration, min_normals


@pytest.mark.parametrize("q, n", [(0.99, 100), (0.95, 20), (0.9, 10), (0.5, 2), (0.0, 1), (1.0, 1), (0.999, 1000)])
def test_min_normals_rule(q, n):
    assert min_normals(q) == n
    if q < 1:  # the rule's definition, checked directly: n is the least count with n (1 - q) >= 1
        assert n * (1 - q) >= 1 - 1e-9 and (n - 1) * (1 - q) < 1 - 1e-9


def test_too_few_normals_warns_with_the_count_needed(caplog):
    with caplog.at_level(logging.WARNING, logger="pradot.calibration"):
        cal = Calibration.calibrate([0.7], quantile=0.99)
    (record,) = caplog.records
    assert "0.99 quantile on 1 normal image(s)" in record.getMessage()
    assert "needs at least 100" in record.getMessage()
    assert cal.n_images == 1 and not cal.sufficient
    assert cal.normalise(0.69) == 0.0 and cal.normalise(0.71) == 1.0  # the saturated score the warning explains


def test_enough_normals_do_not_warn_and_the_size_is_saved(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pradot.calibration"):
        cal = Calibration.calibrate(np.linspace(0, 1, 100), quantile=0.99)
    assert not caplog.records and cal.sufficient and cal.n_images == 100
    loaded = Calibration.load(cal.save(tmp_path / "calibration.json"))
    assert loaded.n_images == 100 and loaded.to_dict()["n_images"] == 100
