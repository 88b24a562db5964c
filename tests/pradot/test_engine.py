"""pradot.engine's typed steps: the batch size rule refuses what would silently train with batch 1."""

import math

import pytest

from pradot.engine import batch_size_for


def test_batch_size_is_batch_ratio_times_n():
    assert batch_size_for(16, 4) == 64 and batch_size_for(0.25, 3) == 3 and batch_size_for(1, 0.4) == 1


@pytest.mark.parametrize(
    "n, ratio, phrase",
    [
        (4, 0, r"batch_ratio=0 is out of range: it must be a number in \(0, 1024\]"),
        (4, -3, r"batch_ratio=-3 is out of range"),
        (4, math.nan, r"batch_ratio=nan is out of range"),
        (math.inf, 4, r"n=inf is out of range: it must be a number \("),
    ],
)
def test_batch_size_refuses_what_would_silently_train_with_batch_1(n, ratio, phrase):
    with pytest.raises(ValueError, match=phrase):
        batch_size_for(n, ratio)
