"""Where results go: resolved once in the driver, whatever directory a trial runs in."""

import json

from tinyfold_ray.results.storage import absolute_location
from tinyfold_ray.study.cli import job_working_dir_warning


def test_a_relative_output_is_made_absolute_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_location("results") == str(tmp_path / "results")
    assert absolute_location("./a/../results") == str(tmp_path / "results")
    assert absolute_location("s3://bucket/results") == "s3://bucket/results"  # a URI as it is
    monkeypatch.chdir("/")
    assert absolute_location(str(tmp_path / "results")) == str(tmp_path / "results")


def test_a_relative_output_under_a_job_with_a_working_dir_is_warned_about(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert job_working_dir_warning("results", "/here/results") is None  # not a job
    monkeypatch.setenv(
        "RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}})
    )
    warning = job_working_dir_warning("results", "/tmp/ray/job/results")
    assert warning and "/tmp/ray/job/results" in warning and "absolute path" in warning
    assert job_working_dir_warning("/shared/results", "/shared/results") is None
    assert job_working_dir_warning("s3://bucket/results", "s3://bucket/results") is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}}))
    assert job_working_dir_warning("results", "/x/results") is None  # a job without --working-dir
