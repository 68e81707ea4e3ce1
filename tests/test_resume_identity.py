"""Resume by value, without Ray: null is a setting's value, a column an older file lacks is the default of
its time, and a finished trial from another machine or software is refused. What the trials would run on
now is passed to `plan` (the real probe runs on Ray in test_study_identity.py)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.results.schema import IDENTITY_COLUMNS, config_hash, config_values
from tinyfold_ray.results.writer import existing_trials, write_trial
from tinyfold_ray.study import expand, parse_study
from tinyfold_ray.study.resume import changed_identity, changed_settings, check_unchanged
from tinyfold_ray.study.runner import plan

STUDY = {
    "name": "who",
    "resources": {"device": "cpu"},
    "train": {"num_steps": 3, "warmup_steps": 2},
    "sweep": {"num_workers": [1, 2]},
}
H100 = {
    "device_name": "NVIDIA H100 80GB HBM3",
    "backend": "cuda",
    "node_gpus": 8,
    "torch_version": "2.5.0",
    "ray_version": "2.60.0",
    "comm_library_version": "2.21.5",
    "env_vars": json.dumps({"NCCL_DEBUG": "INFO"}),
}
CPU_HERE = {
    "device_name": "cpu-model-x",
    "backend": "cpu",
    "node_gpus": 0,
    "torch_version": "2.13.0",
    "ray_version": "2.60.0",
    "comm_library_version": None,
    "env_vars": "{}",
}
# The setting columns of schema version 1 (git e368408^): e.g. learning_rate, num_threads and device are
# missing.
SCHEMA_1_SETTINGS = (
    "scaling num_workers batch_per_worker global_batch amp compile attention fused_optimizer c_m c_z "
    "num_blocks num_seqs seq_len bucket_cap_mb gradient_as_bucket_view static_graph cpus_per_worker "
    "placement_strategy steps warmup_steps seed"
).split()


def stored_row(trial: TrialSpec, **values) -> dict:
    """A trial row as a study writes it (settings, hash, status) with `values` over it."""
    config = config_values(trial)
    names = {"study": trial.study, "trial_id": trial.trial_id, "repeat": trial.repeat}
    return {**config, "config_hash": config_hash(config), **names, "status": "ok", **values}


def test_a_setting_from_null_to_a_value_is_a_change():
    asked = TrialSpec(train=TrainConfig(num_threads=4))
    ran = stored_row(TrialSpec())  # num_threads: null, as stored
    assert ran["num_threads"] is None
    assert changed_settings(ran, asked) == ["num_threads None -> 4"]
    with pytest.raises(StudySpecError) as info:
        check_unchanged("s.yaml", "out/s", [asked], {asked.trial_id: ran})
    assert "ran with other settings: num_threads None -> 4;" in str(info.value)
    assert "\n" not in str(info.value)
    # And back: a stored value asked as null now.
    assert changed_settings(stored_row(asked), TrialSpec()) == ["num_threads 4 -> None"]


def test_a_column_an_older_file_lacks_is_the_default_of_its_time():
    at_defaults = TrialSpec()
    schema_1 = {k: v for k, v in stored_row(at_defaults).items() if k in SCHEMA_1_SETTINGS}
    schema_1.update(status="ok", fused_optimizer=True)  # no hash; fused_optimizer recorded what ran
    assert changed_settings(schema_1, at_defaults) == []  # and asking "auto" matches what ran
    lr = TrialSpec(train=TrainConfig(learning_rate=1e-3, num_threads=4))
    assert changed_settings(schema_1, lr) == [
        "learning_rate 0.0003 (implied) -> 0.001",
        "num_threads None (implied) -> 4",
    ]
    # A null the file holds is a value too, and a column it lacks is not the same as any value.
    assert changed_settings({**schema_1, "num_threads": None}, lr) == [
        "learning_rate 0.0003 (implied) -> 0.001",
        "num_threads None -> 4",
    ]
    assert changed_settings({**schema_1, "c_m": 32}, at_defaults) == ["c_m 32 -> 64"]


def test_the_identity_compares_what_the_row_recorded_and_each_variable():
    assert changed_identity(H100, H100) == []
    assert changed_identity(H100, CPU_HERE) == [
        "device_name 'NVIDIA H100 80GB HBM3' -> 'cpu-model-x'",
        "backend 'cuda' -> 'cpu'",
        "node_gpus 8 -> 0",
        "torch_version '2.5.0' -> '2.13.0'",
        "comm_library_version '2.21.5' -> None",
        "env NCCL_DEBUG 'INFO' -> unset",
    ]
    # Not recorded (a file older than the column, or a null): unknown, so not compared.
    older = {k: v for k, v in H100.items() if k not in ("node_gpus", "env_vars")}
    now = {**H100, "node_gpus": 4, "env_vars": "{}"}
    assert changed_identity({**older, "comm_library_version": None}, now) == []
    assert changed_identity(
        H100, {**H100, "env_vars": json.dumps({"NCCL_DEBUG": "WARN", "NCCL_X": "1"})}
    ) == [
        "env NCCL_DEBUG 'INFO' -> 'WARN'",
        "env NCCL_X unset -> '1'",
    ]


def write_finished(out, identity: dict) -> list[TrialSpec]:
    trials = expand(parse_study(STUDY))
    for trial in trials:
        write_trial(str(out), STUDY["name"], stored_row(trial, **identity), [])
    return trials


def now(identity: dict):
    """What the trials would run on now, as study/identity.py's probe answers; records its calls."""

    def current(trials):
        current.calls.append([t.trial_id for t in trials])
        return {t.trial_id: identity for t in trials}

    current.calls = []
    return current


def test_a_study_resumed_on_another_machine_or_software_is_refused_in_one_line(tmp_path):
    out = tmp_path / "results"
    trials = write_finished(out, H100)
    spec = parse_study(STUDY, source="who.yaml")
    with pytest.raises(StudySpecError) as info:
        plan(spec, str(out), identity=now(CPU_HERE))
    message = str(info.value)
    assert message.startswith("who.yaml: 2 finished trial(s)") and "\n" not in message
    assert "ran on another machine or software than the trials would now" in message
    assert "device_name 'NVIDIA H100 80GB HBM3' -> 'cpu-model-x'" in message
    assert "torch_version '2.5.0' -> '2.13.0'" in message
    assert "--rerun" in message and "new name or --output" in message

    # The same machine resumes; --rerun and a new output run everything and ask nothing.
    assert plan(spec, str(out), identity=now(H100)) == ([], trials)
    asked = now(CPU_HERE)
    assert plan(spec, str(out), rerun=True, identity=asked) == (trials, [])
    assert plan(spec, str(tmp_path / "new"), identity=asked) == (trials, [])
    assert asked.calls == []


def test_only_finished_trials_are_probed_and_only_once_their_settings_match(tmp_path):
    out = tmp_path / "results"
    trials = write_finished(out, {k: None for k in IDENTITY_COLUMNS})  # e.g. recorded nothing
    spec = parse_study(STUDY)
    asked = now(CPU_HERE)
    assert plan(spec, str(out), identity=asked) == ([], trials)  # nothing recorded, nothing differs
    assert asked.calls == [[t.trial_id for t in trials]]

    changed = parse_study({**STUDY, "train": {"num_steps": 4, "warmup_steps": 2}})
    asked = now(CPU_HERE)
    with pytest.raises(StudySpecError, match="num_steps 3 -> 4"):
        plan(changed, str(out), identity=asked)
    assert asked.calls == []  # settings first: a changed study never waits for the cluster


def test_an_older_file_on_disk_resumes_only_at_the_defaults_of_its_time(tmp_path):
    # Files as schema version 1 wrote them: fewer columns, so those keys are absent from the read rows.
    at_defaults = {**STUDY, "resources": {}}
    trials = expand(parse_study(at_defaults))
    study_dir = tmp_path / "results" / STUDY["name"]
    (study_dir / "_steps").mkdir(parents=True)
    for trial in trials:
        row = {k: v for k, v in stored_row(trial).items() if k in SCHEMA_1_SETTINGS}
        row.update(trial_id=trial.trial_id, status="ok", schema_version=1)
        for directory in (study_dir, study_dir / "_steps"):
            pq.write_table(pa.Table.from_pylist([row]), directory / f"{trial.trial_id}.parquet")
    out = str(tmp_path / "results")
    assert "learning_rate" not in existing_trials(out, STUDY["name"])[trials[0].trial_id]
    assert plan(parse_study(at_defaults), out, identity=now(CPU_HERE)) == ([], trials)
    faster = {**at_defaults, "train": {**STUDY["train"], "learning_rate": 1e-3}}
    with pytest.raises(
        StudySpecError, match=r"ran with other settings: learning_rate 0.0003 \(implied\) -> 0.001;"
    ):
        plan(parse_study(faster), out, identity=now(CPU_HERE))
