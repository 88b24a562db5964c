"""Every dataset kind the library loads has its config group conf/data/<kind>.yaml, which composes into the
DataSpec that opens it (loader options included)."""

import pytest

from pipelines import config
from pradot.data import DATASET_KINDS


@pytest.mark.parametrize("kind", DATASET_KINDS)
def test_each_kind_has_its_data_config(kind):
    spec = config.data_spec(config.compose("train", [f"data={kind}", "data_root=/d"]))
    assert spec.kind == kind and spec.root == "/d" and spec.image_size > 0


def test_loader_options_reach_the_data_spec():
    spec = config.data_spec(
        config.compose(
            "train",
            config.parse_overrides(
                ["data=real_iad", "workdir=/w", "overrides=data.options.views=C1,C3 data.options.json_dir=splits"]
            ),
        )
    )
    assert spec.options == {"variant": "realiad_jsons", "resolution": "1024", "views": "C1,C3", "json_dir": "/w/splits"}
