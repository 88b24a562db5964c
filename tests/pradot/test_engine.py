"""pradot.engine's typed steps: the batch size rule refuses what would silently train with batch 1."""

import math

import pytest

from pradot.engine import batch_size_for


def test_batch_size_is_batch_ratio_times_n():
    assert batch_size_for(16, 4) == 64 and batch_size_for(0.25, 3) == 3 and batch_size_for(1, 0.4) == 1


@pytest.mark.parametrize(
    "n, ratio, phrase",
    [
        (4, 0, "batch_ratio must be > 0"),
        (4, -3, "batch_ratio must be > 0"),
        (4, math.nan, "batch_ratio must be > 0"),
        (math.inf, 4, "finite"),
    ],
)
def test_batch_size_refuses_what_would_silently_train_with_batch_1(n, ratio, phrase):
    with pytest.raises(ValueError, match=phrase):
        batch_size_for(n, ratio)
