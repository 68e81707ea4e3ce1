"""Study files: validation before anything starts, and sweep expansion. No Ray here."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.study import expand, load_study, parse_study

STUDIES = Path(__file__).resolve().parent.parent / "studies"

GOOD = {
    "name": "ok",
    "scaling": "weak",
    "repeats": 2,
    "resources": {"device": "cpu", "cpus_per_worker": 1},
    "model": {"c_m": 16, "c_z": 16, "num_blocks": 1},
    "train": {"num_steps": 5, "warmup_steps": 1},
    "sweep": {"num_workers": [1, 2, 4], "batch_per_worker": [2, 4], "amp": ["none", "bf16"]},
}


def bad(**changes):
    study = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            study[section][sub] = value
        elif value is None:
            del study[section]
        else:
            study[section] = value
    return study


MISTAKES = [
    (bad(colour="blue"), "colour: unknown key"),
    (bad(name=None), "name: missing"),
    (bad(name="../escape"), "name: '../escape' must be letters"),
    (bad(repeats="three"), "repeats='three' is not allowed: must be an integer, got a string"),
    (bad(repeats=0), "repeats: must be between 1 and 1000, got 0"),
    (bad(scaling="linear"), "scaling='linear' is not allowed: choose one of weak, strong"),
    (bad(sweep__num_workers=[]), "sweep.num_workers: is empty"),
    (bad(sweep__heads=[1, 2]), "sweep.heads: unknown key"),
    (bad(sweep={"amp": ["none"]}), "sweep.num_workers: missing"),
    (bad(sweep__amp=["none", "fp8"]), "sweep.amp='fp8' is not allowed"),
    (bad(model__c_m="wide"), "model.c_m='wide' is not allowed: must be an integer"),
    (bad(model__depth=3), "model.depth: unknown key"),
    (bad(model__c_m=30), "model.c_m=30 is not allowed: must be divisible by num_heads_msa"),
    (bad(train__batch_size=4), "train.batch_size: set the batch with sweep.batch_per_worker"),
    (bad(resources__device="tpu"), "resources.device='tpu' is not allowed: choose one of"),
    (bad(resources__cpus_per_worker=0), "resources.cpus_per_worker=0.0 is not allowed: must be > 0"),
    (bad(scaling="strong"), "sweep.batch_per_worker: belongs to scaling: weak"),
    (
        bad(scaling="strong", sweep={"num_workers": [1, 2, 4], "global_batch": [6]}),
        "sweep.global_batch: 6 is not divisible by num_workers 4",
    ),
    (bad(sweep__num_workers=[1, 1]), "sweep.num_workers: repeats a value"),
    (bad(sweep__num_workers=[0, 1]), "sweep.num_workers: values must be >= 1"),
    (bad(model=["c_m", 16]), "model: must be a mapping"),
]


@pytest.mark.parametrize("study, message", MISTAKES, ids=[m for _, m in MISTAKES])
def test_each_mistake_has_its_own_clear_message(study, message):
    with pytest.raises(StudySpecError) as info:
        parse_study(study, source="bad.yaml")
    assert str(info.value).startswith("bad.yaml: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_messages_are_distinct():
    messages = set()
    for study, _ in MISTAKES:
        with pytest.raises(StudySpecError) as info:
            parse_study(study, source="bad.yaml")
        messages.add(str(info.value))
    assert len(messages) == len(MISTAKES)


def test_cli_rejects_a_bad_file_in_one_line_without_starting_ray(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsweep: {num_workers: [1, 2]}\nrepeats: [1\n")  # broken YAML
    proc = subprocess.run(
        [sys.executable, "-m", "tinyfold_ray.study", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not valid YAML" in proc.stderr
    assert "Ray" not in proc.stdout  # nothing connected or started


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\nsweep: {num_workers: [1]}\n")
    with pytest.raises(StudySpecError, match="not valid YAML"):
        load_study(path)


def test_matrix_sweep_expands_in_order_with_repeats_outermost():
    trials = expand(parse_study(GOOD))
    assert len(trials) == 2 * 3 * 2 * 2
    ids = [t.trial_id for t in trials]
    assert ids[:4] == ["w1-b2-amp_none-r0", "w1-b2-amp_bf16-r0", "w1-b4-amp_none-r0", "w1-b4-amp_bf16-r0"]
    assert ids[12] == "w1-b2-amp_none-r1" and len(set(ids)) == len(ids)
    assert [t.repeat for t in trials] == [0] * 12 + [1] * 12
    w4 = next(t for t in trials if t.trial_id == "w4-b4-amp_bf16-r1")
    assert (w4.num_workers, w4.train.batch_size, w4.global_batch, w4.train.amp) == (4, 4, 16, "bf16")
    assert (w4.model.c_m, w4.train.num_steps, w4.device) == (16, 5, "cpu")


def test_strong_scaling_divides_the_global_batch():
    spec = parse_study(bad(scaling="strong", sweep={"num_workers": [1, 2, 4], "global_batch": [8]}))
    assert [(t.num_workers, t.train.batch_size, t.global_batch) for t in expand(spec)[:3]] == [
        (1, 8, 8),
        (2, 4, 8),
        (4, 2, 8),
    ]


def test_any_model_or_ddp_setting_can_be_swept():
    spec = parse_study(
        bad(sweep={"num_workers": [1], "attention": ["eager", "sdpa"], "static_graph": [True]})
    )
    trials = expand(spec)
    assert [t.model.attention for t in trials[:2]] == ["eager", "sdpa"]
    assert (
        trials[0].ddp.static_graph is True and trials[0].trial_id == "w1-attention_eager-static_graph_on-r0"
    )


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    trials = expand(load_study(path))
    assert trials and all(t.study == path.stem for t in trials)
