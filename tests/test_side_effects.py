"""What starting Ray and running trials leave behind in the calling process and its home directory:
nothing. The settings of the cluster, Train's controller and Tune travel in Ray's runtime environment or
are set for one fit only, a user's own value of them still wins, and Train's storage is a temporary
folder that is removed, so nothing accumulates in ~/ray_results."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.ray_helpers import TINY_STUDY_MODEL, environ_but_ray_process_env, run_cli
from tinyfold_ray.config import TrialSpec
from tinyfold_ray.ray_session import EMBEDDED_TRAIN_ENV
from tinyfold_ray.study.cli import main as study_main
from tinyfold_ray.train import faults
from tinyfold_ray.train.trial import TRAIN_ENV, make_trainer

START_TIMEOUT = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# What Train's controller runs with, as its ranks see it: they inherit the controller's environment.
CONTROLLER_SETTINGS = (*TRAIN_ENV, START_TIMEOUT, *EMBEDDED_TRAIN_ENV)
USERS_INTERVAL = "0.7"  # the user's own RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (the default is TRAIN_ENV's)


def _report_settings(config):
    return {name: os.environ.get(name) for name in CONTROLLER_SETTINGS}


def _ray_results(home: Path) -> set[str]:
    """What ~/ray_results (Ray Train's and Tune's default storage) holds in `home`."""
    folder = home / "ray_results"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home directory of this process's own, where ~/ray_results would appear for what runs here;
    the shared Ray's processes (Tune's trial drivers) keep the real one, which must gain nothing
    either. It holds the Ray authentication token of the real one, as every home does once Ray ran
    there: a cluster started after another in one process authenticates as the first did
    (ray_session.RAY_PROCESS_ENV) and reads the token from the home."""
    real = Path.home()
    before = _ray_results(real)
    path = tmp_path / "home"
    token = real / ".ray" / "auth_token"
    if token.exists():
        (path / ".ray").mkdir(parents=True)
        shutil.copy(token, path / ".ray" / "auth_token")
    path.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(path))
    yield path
    assert _ray_results(real) <= before, "a run left a folder in the real ~/ray_results"


def _one_trial_study(tmp_path: Path) -> Path:
    study = {
        "name": "side",
        "resources": {"device": "cpu", "cpus_per_worker": 1},
        "model": TINY_STUDY_MODEL,
        "train": {"num_steps": 3, "warmup_steps": 2},
        "sweep": {"num_workers": [1]},
    }
    path = tmp_path / "side.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_a_trial_and_a_study_leave_the_environment_and_the_home_directory_as_they_were(
    home, tmp_path, monkeypatch, capfd, ray_cluster
):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", USERS_INTERVAL)
    before = environ_but_ray_process_env()

    spec = TrialSpec(study="side", trial_id="env", start_timeout_s=41.0)
    trainer = make_trainer(spec, False, train_fn=_report_settings)
    seen = trainer.fit().return_value
    assert environ_but_ray_process_env() == before
    assert seen["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == USERS_INTERVAL
    assert seen["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == TRAIN_ENV["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"]
    assert float(seen[START_TIMEOUT]) == min(41.0, faults.time_limit_s(spec, False))
    assert (
        seen["TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"]
        == EMBEDDED_TRAIN_ENV["TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"]
    )
    storage = Path(trainer.run_config.storage_path)
    assert storage.parent == Path(tempfile.gettempdir()) and not storage.exists()

    # A study run by its CLI in this process: Tune's settings are the fit's only, too.
    code, _, err = run_cli(
        "tinyfold_ray.study",
        study_main,
        [str(_one_trial_study(tmp_path)), "--output", str(tmp_path / "out")],
        capfd,
    )
    assert code == 0, err[-3000:]
    assert environ_but_ray_process_env() == before
    assert sorted(p.name for p in home.iterdir()) in ([], [".ray"])  # nothing but the token, if any
