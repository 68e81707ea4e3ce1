"""The driver's collective-library variables and a study's `env:` reach the workers, and a trial
records them (no Ray here: the trainer is built, not fitted)."""

import json

import pytest

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import ConfigError, StudySpecError
from tinyfold_ray.study import expand, parse_study
from tinyfold_ray.train.environment import REDACTED, forwarded_env, recorded_env
from tinyfold_ray.train.trial import WORKER_ENV, build_outcome, make_trainer

STUDY = {"name": "env", "resources": {"device": "cpu"}, "sweep": {"num_workers": [1, 2]}}


def test_collective_and_runtime_variables_are_forwarded_but_not_device_visibility():
    driver = {
        "NCCL_SOCKET_IFNAME": "ib0",
        "RCCL_MSCCL_ENABLE": "0",
        "TORCH_NCCL_BLOCKING_WAIT": "1",
        "GLOO_SOCKET_IFNAME": "eth0",
        "HSA_FORCE_FINE_GRAIN_PCIE": "1",
        "HIP_FORCE_DEV_KERNARG": "1",
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "MIOPEN_USER_DB_PATH": "/tmp/miopen",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "HIP_VISIBLE_DEVICES": "0",
        "ROCR_VISIBLE_DEVICES": "0",
        "PATH": "/usr/bin",
        "RAY_ADDRESS": "auto",
        "OMP_NUM_THREADS": "4",
    }
    forwarded = forwarded_env(driver)
    assert set(forwarded) == {
        "NCCL_SOCKET_IFNAME",
        "RCCL_MSCCL_ENABLE",
        "TORCH_NCCL_BLOCKING_WAIT",
        "GLOO_SOCKET_IFNAME",
        "HSA_FORCE_FINE_GRAIN_PCIE",
        "HIP_FORCE_DEV_KERNARG",
        "CUDA_DEVICE_MAX_CONNECTIONS",
        "MIOPEN_USER_DB_PATH",
    }
    assert forwarded["NCCL_SOCKET_IFNAME"] == "ib0"


def test_the_trainer_gives_workers_the_drivers_variables_and_the_studys_env_over_them(monkeypatch):
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    spec = TrialSpec(env={"NCCL_SOCKET_IFNAME": "ib0", "FI_PROVIDER": "cxi"})
    env_vars = make_trainer(spec, False).run_config.worker_runtime_env["env_vars"]
    assert env_vars["NCCL_DEBUG"] == "INFO"
    assert env_vars["NCCL_SOCKET_IFNAME"] == "ib0"  # the study file wins
    assert env_vars["FI_PROVIDER"] == "cxi"  # any name may come from the study file
    assert "CUDA_VISIBLE_DEVICES" not in env_vars
    assert env_vars["MALLOC_ARENA_MAX"] == WORKER_ENV["MALLOC_ARENA_MAX"]


def test_every_trial_row_records_the_variables_with_secrets_redacted(monkeypatch):
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    monkeypatch.setenv("NCCL_IB_AUTH_TOKEN", "hunter2")
    spec = TrialSpec(env={"MY_API_KEY": "s3cr3t", "GLOO_SOCKET_IFNAME": "lo"})
    outcome = build_outcome(spec, None, "RuntimeError: boom", False, None, None, 1.0, None)
    recorded = json.loads(outcome.row["env_vars"])
    assert recorded["NCCL_DEBUG"] == "WARN" and recorded["GLOO_SOCKET_IFNAME"] == "lo"
    assert recorded["NCCL_IB_AUTH_TOKEN"] == REDACTED and recorded["MY_API_KEY"] == REDACTED
    assert "hunter2" not in outcome.row["env_vars"] and "s3cr3t" not in outcome.row["env_vars"]
    assert json.loads(recorded_env({})) == {}


def test_a_study_files_env_reaches_every_trial():
    spec = parse_study({**STUDY, "env": {"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": 1, "NCCL_P2P": True}})
    assert spec.env == {"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": "1", "NCCL_P2P": "true"}
    assert all(t.env == spec.env for t in expand(spec))


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NCCL_DEBUG": ["INFO"]}, "env.NCCL_DEBUG: must be a string or a number"),
        ({"CUDA_VISIBLE_DEVICES": "0"}, "Ray sets device visibility per worker"),
        ({"1BAD": "x"}, "not a variable name"),
        (["NCCL_DEBUG=INFO"], "env: must be a mapping"),
    ],
)
def test_a_bad_env_is_one_line_before_ray_starts(env, message):
    with pytest.raises(StudySpecError) as info:
        parse_study({**STUDY, "env": env}, source="s.yaml")
    assert message in str(info.value) and str(info.value).startswith("s.yaml: ")
    assert "\n" not in str(info.value)


def test_the_python_api_refuses_device_visibility_too():
    with pytest.raises(ConfigError, match="HIP_VISIBLE_DEVICES"):
        TrialSpec(env={"HIP_VISIBLE_DEVICES": "3"})
