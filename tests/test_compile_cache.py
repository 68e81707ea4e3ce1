"""torch.compile's cache folder: named by the study, handed to every worker, never part of a result."""

from __future__ import annotations

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.results.schema import config_hash, config_values
from tinyfold_ray.study.spec import parse_study, resolve
from tinyfold_ray.train.trial import compile_cache_env

STUDY = {"name": "cc", "sweep": {"num_workers": [1]}}


def test_the_study_names_the_cache_folder_of_every_trial():
    spec = parse_study({**STUDY, "resources": {"compile_cache": "/scratch/inductor"}})
    trial = resolve(spec, {"num_workers": 1})
    assert compile_cache_env(trial) == {"TORCHINDUCTOR_CACHE_DIR": "/scratch/inductor"}
    # Unset: torch's own default on each node (nothing is passed).
    assert compile_cache_env(resolve(parse_study(STUDY), {"num_workers": 1})) == {}


def test_home_is_each_worker_node_s_own():
    # Ray expands ${HOME} on the node that starts the worker; `~` would reach torch unexpanded.
    assert compile_cache_env(TrialSpec(compile_cache="~/.cache/inductor")) == {
        "TORCHINDUCTOR_CACHE_DIR": "${HOME}/.cache/inductor"
    }
    assert compile_cache_env(TrialSpec(compile_cache="~")) == {"TORCHINDUCTOR_CACHE_DIR": "${HOME}"}


def test_moving_the_cache_changes_no_result_identity():
    # A resumed study whose cache moved keeps its finished trials (the hash is what resume compares).
    here, there = TrialSpec(compile_cache="/a"), TrialSpec(compile_cache="/b")
    assert "compile_cache" not in config_values(here)
    assert config_hash(config_values(here)) == config_hash(config_values(there))
