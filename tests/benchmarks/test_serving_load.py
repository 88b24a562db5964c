"""The serving load benchmark's parts that need no server: the hostile request it sends is what it claims
(a 25 MP image in ~110 KB of base64), the four kinds of request, and the memory sampler reads this process."""

import base64
import io
import json
import os

from PIL import Image

from benchmarks import serving_load


def test_the_requests_are_what_the_benchmark_says():
    png = serving_load.flat_png(5000, 5000)
    assert len(base64.b64encode(png)) < 120_000
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (5000, 5000) and img.mode == "RGB"
    bodies = serving_load.bodies()
    assert set(bodies) == set(serving_load.KINDS) == set(serving_load.EXPECTED)
    over = json.loads(bodies["over_budget"])["dataframe_split"]["data"]
    assert len(over) == 5  # 125 MP: over the default 100 MP request budget
    assert json.loads(bodies["big_npy_map"])["params"] == {"return_map": True, "map_format": "npy"}


def test_tree_rss_reads_this_process():
    rss = serving_load.tree_rss(os.getpid())
    assert 10 * 2**20 < rss < 64 * 2**30
    assert serving_load.percentile([1.0, 2.0, 3.0], 50) == 2.0
