"""The sweep's Tune folder (pipelines/sweep/storage.py): URIs kept as they are, local paths absolute, the folder
read and written through pyarrow, the sweep to resume found, and a trial's own check of the folder."""

import os
import time

import pytest

from pipelines.sweep import storage
from pipelines.sweep.space import SweepError


def test_uris_are_kept_and_paths_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.storage_location("s3://bucket/sweeps/") == "s3://bucket/sweeps"
    assert storage.storage_location("gs://b/x") == "gs://b/x"
    assert storage.storage_location(".ray_results") == str(tmp_path / ".ray_results")
    assert storage.storage_location("~/r") == os.path.expanduser("~/r")
    folder = storage.SweepFolder.of("s3://bucket/sweeps", "s1")
    assert folder.location == "s3://bucket/sweeps/s1" and not folder.is_local
    assert storage.SweepFolder.at("s3://bucket/sweeps/s1") == folder
    assert storage.SweepFolder.at(str(tmp_path / "r" / "s1")) == storage.SweepFolder(str(tmp_path / "r"), "s1")


def test_a_local_folder_is_read_written_and_found_to_resume(tmp_path):
    old, new = storage.SweepFolder.of(str(tmp_path), "old"), storage.SweepFolder.of(str(tmp_path), "new")
    assert not old.exists()
    old.write_text(storage.STATE_FILE, '{"parent_run_id": "p1"}')
    time.sleep(0.05)
    new.write_text(storage.STATE_FILE, '{"parent_run_id": "p2"}')
    assert old.exists() and old.read_text(storage.STATE_FILE) == '{"parent_run_id": "p1"}'
    assert storage.find_resume_folder(str(tmp_path), None, None) == new  # the latest
    assert storage.find_resume_folder(str(tmp_path), None, "old") == old
    assert storage.find_resume_folder("/elsewhere", str(tmp_path / "old"), None) == old
    with pytest.raises(SweepError, match="no sweep to resume"):
        storage.find_resume_folder(str(tmp_path / "none"), None, None)
    empty = storage.SweepFolder.of(str(tmp_path), "empty")
    empty.write_text("x", "1")
    empty.delete("x")
    empty.delete_if_empty()
    assert not (tmp_path / "empty").exists()
    old.delete_if_empty()
    assert old.exists()  # not empty: kept


def test_a_trial_refuses_a_folder_that_is_not_its_sweeps(tmp_path):
    folder = storage.SweepFolder.of(str(tmp_path), "s")
    with pytest.raises(storage.NodeSetupError, match="cannot read the sweep folder"):
        storage.check_from_this_node(folder.location, "p1")
    folder.write_text(storage.STATE_FILE, '{"parent_run_id": "other"}')
    with pytest.raises(storage.NodeSetupError, match="sees another folder"):
        storage.check_from_this_node(folder.location, "p1")
    folder.write_text(storage.STATE_FILE, '{"parent_run_id": "p1"}')
    storage.check_from_this_node(folder.location, "p1")
    assert isinstance(storage.NodeSetupError("x"), OSError)  # an infrastructure failure, not the trial's
