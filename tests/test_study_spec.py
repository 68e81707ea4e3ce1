"""Study files: validation before anything starts, and sweep expansion. No Ray here."""

import re
from pathlib import Path

import pytest
import yaml

from tests.ray_helpers import run_cli
from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.results.schema import config_hash, config_values
from tinyfold_ray.study import expand, load_study, parse_study
from tinyfold_ray.study.cli import main as study_main
from tinyfold_ray.study.resume import changed_settings

STUDIES = Path(__file__).resolve().parent.parent / "studies"

GOOD = {
    "name": "ok",
    "scaling": "weak",
    "repeats": 2,
    "resources": {"device": "cpu", "cpus_per_worker": 1},
    "model": {"c_m": 16, "c_z": 16, "num_blocks": 1},
    "train": {"num_steps": 5, "warmup_steps": 2},
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


def study_cli(path: Path, capsys) -> tuple[int, str, str]:
    """`python -m tinyfold_ray.study PATH`, called in this process."""
    return run_cli("tinyfold_ray.study", study_main, [str(path)], capsys)


def test_cli_rejects_a_bad_file_in_one_line_without_starting_ray(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsweep: {num_workers: [1, 2]}\nrepeats: [1\n")  # broken YAML
    code, out, err = study_cli(path, capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "not valid YAML" in err
    assert "Ray" not in out  # nothing connected or started


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\nsweep: {num_workers: [1]}\n")
    with pytest.raises(StudySpecError, match="not valid YAML"):
        load_study(path)


def test_matrix_sweep_expands_every_combination_with_repeats_outermost():
    trials = expand(parse_study(GOOD))
    assert len(trials) == 2 * 3 * 2 * 2
    ids = [t.trial_id for t in trials]
    assert len(set(ids)) == len(ids) and [t.repeat for t in trials] == [0] * 12 + [1] * 12
    assert sorted(ids[:12]) == sorted(i.replace("-r1", "-r0") for i in ids[12:])  # each repeat: all 12
    assert "w1-b2-amp_none-r0" in ids[:12] and "w4-b4-amp_bf16-r1" in ids[12:]
    w4 = next(t for t in trials if t.trial_id == "w4-b4-amp_bf16-r1")
    assert (w4.num_workers, w4.train.batch_size, w4.global_batch, w4.train.amp) == (4, 4, 16, "bf16")
    assert (w4.model.c_m, w4.train.num_steps, w4.device) == (16, 5, "cpu")


def test_strong_scaling_divides_the_global_batch():
    spec = parse_study(bad(scaling="strong", sweep={"num_workers": [1, 2, 4], "global_batch": [8]}))
    assert sorted((t.num_workers, t.train.batch_size, t.global_batch) for t in expand(spec)[:3]) == [
        (1, 8, 8),
        (2, 4, 8),
        (4, 2, 8),
    ]


def test_any_model_or_ddp_setting_can_be_swept():
    spec = parse_study(
        bad(sweep={"num_workers": [1], "attention": ["eager", "sdpa"], "static_graph": [True]})
    )
    trials = {t.trial_id: t for t in expand(spec) if t.repeat == 0}
    assert {i: t.model.attention for i, t in trials.items()} == {
        "w1-attention_eager-static_graph_on-r0": "eager",
        "w1-attention_sdpa-static_graph_on-r0": "sdpa",
    }
    assert all(t.ddp.static_graph is True for t in trials.values())


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    trials = expand(load_study(path))
    assert trials and all(t.study == path.stem for t in trials)


# ------------------------------------------------------------------------------- strict study files

DUPLICATES = {
    "top": (
        "name: a\nrepeats: 1\nsweep: {num_workers: [1]}\nrepeats: 2\n",
        "line 4: repeats: duplicate key (first at line 2)",
    ),
    "section": (
        "name: a\ntrain:\n  num_steps: 5\n  seed: 1\n  num_steps: 6\nsweep: {num_workers: [1]}\n",
        "line 5: train.num_steps: duplicate key (first at line 3)",
    ),
    "sweep": (
        "name: a\nsweep:\n  num_workers: [1]\n  amp: [none]\n  num_workers: [2]\n",
        "line 5: sweep.num_workers: duplicate key (first at line 3)",
    ),
    "two train blocks": (
        "name: a\ntrain: {seed: 1}\nsweep: {num_workers: [1]}\ntrain: {seed: 2}\n",
        "line 4: train: duplicate key (first at line 2)",
    ),
}


def _study_file(tmp_path, content: bytes | str):
    path = tmp_path / "study.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("name", DUPLICATES)
def test_a_duplicated_key_at_any_level_names_the_key_and_both_lines(tmp_path, name):
    text, message = DUPLICATES[name]
    with pytest.raises(StudySpecError, match=re.escape(message)):
        load_study(_study_file(tmp_path, text))


UNREADABLE = {
    "binary": (bytes(range(256)) * 4, "line 1: a NUL byte; a study file is YAML text"),
    "NUL byte": (b"name: a\nsweep: {num_workers: [1]}\n\x00\n", "line 3: a NUL byte"),
    "latin-1": ("name: caf\xe9\n".encode("latin-1"), "line 1: byte 0xe9 is not UTF-8"),
    "control character": (b"name: a\n\x07\n", "line 2: not valid YAML: character #x0007"),
    "syntax": (b"name: a\nsweep: {num_workers: [1, 2\n", "line 3: not valid YAML: expected ',' or ']'"),
    "huge repeats": (
        b"name: a\nrepeats: 1000000000000\nsweep: {num_workers: [1]}\n",
        "repeats: must be between 1 and 1000",
    ),
}


@pytest.mark.parametrize("name", UNREADABLE)
def test_unreadable_files_and_absurd_numbers_are_one_line(tmp_path, name):
    content, message = UNREADABLE[name]
    with pytest.raises(StudySpecError) as info:
        load_study(_study_file(tmp_path, content))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_exits_2_with_one_line_for_each_kind_of_bad_file_before_ray(tmp_path, capsys):
    cases = [DUPLICATES["sweep"], UNREADABLE["binary"], UNREADABLE["NUL byte"], UNREADABLE["huge repeats"]]
    for i, (content, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        code, out, err = study_cli(path, capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and message in err and str(path) in err
        assert out == ""  # nothing started


RANGES = [
    (
        bad(train__seed=2**63),
        "train.seed=9223372036854775808 is not allowed: must fit a 64-bit signed integer",
    ),
    (
        bad(train__learning_rate=float("inf")),
        "train.learning_rate=inf is not allowed: must be a finite number",
    ),
    (bad(train__learning_rate=-1e-3), "learning_rate=-0.001 is not allowed: must be > 0"),
    (bad(sweep__num_workers=[1, 100000]), "sweep.num_workers=100000 is not allowed: must be <= 4096"),
    (
        bad(sweep={"num_workers": list(range(1, 101)), "seed": list(range(101))}),
        "10100 combinations x 2 repeats = 20200 trials; a study has at most 10000",
    ),
    (bad(sweep__num_worker=[1]), "sweep.num_worker: unknown key; did you mean sweep.num_workers?"),
    (bad(model__learning_rate=1e-3), "model.learning_rate: unknown key; did you mean train.learning_rate?"),
    (bad(num_steps=5), "num_steps: unknown key; did you mean train.num_steps?"),
    (bad(sweep__placement=["PACK"]), "did you mean sweep.placement_strategy?"),
    (
        bad(resources={}, sweep__cpus_per_worker=[0.5, 0]),
        "sweep.cpus_per_worker=0.0 is not allowed: must be > 0",
    ),
    (bad(sweep__cpus_per_worker=[1, 2]), "sweep.cpus_per_worker: is also set as resources.cpus_per_worker"),
]


@pytest.mark.parametrize("study, message", RANGES, ids=[m for _, m in RANGES])
def test_ranges_and_suggestions(study, message):
    with pytest.raises(StudySpecError) as info:
        parse_study(study, source="bad.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_exponent_floats_are_numbers(tmp_path):
    text = "name: a\ntrain: {weight_decay: 1e-2}\nsweep: {num_workers: [1], learning_rate: [1e-3, 3e-4]}\n"
    trials = {t.trial_id: t.train for t in expand(load_study(_study_file(tmp_path, text)))}
    assert trials["w1-learning_rate_0.0003-r0"].learning_rate == 3e-4
    assert trials["w1-learning_rate_0.001-r0"].learning_rate == 1e-3
    assert {t.weight_decay for t in trials.values()} == {0.01}


def test_cpus_per_worker_and_placement_strategy_can_be_swept():
    trials = expand(
        parse_study(
            bad(
                resources={"device": "cpu"},
                sweep={"num_workers": [2], "cpus_per_worker": [1, 0.5], "placement_strategy": ["SPREAD"]},
            )
        )
    )
    assert {t.trial_id: (t.cpus_per_worker, t.placement_strategy) for t in trials if t.repeat == 0} == {
        "w2-cpus_per_worker_1.0-placement_strategy_SPREAD-r0": (1.0, "SPREAD"),
        "w2-cpus_per_worker_0.5-placement_strategy_SPREAD-r0": (0.5, "SPREAD"),
    }


def test_trial_ids_and_settings_do_not_depend_on_key_order(tmp_path):
    forward = "name: a\nrepeats: 2\nsweep:\n  amp: [none, bf16]\n  num_workers: [1, 2]\n  seed: [1, 2]\n"
    backward = "sweep:\n  seed: [1, 2]\n  num_workers: [1, 2]\n  amp: [none, bf16]\nrepeats: 2\nname: a\n"
    one, two = (expand(load_study(_study_file(tmp_path, text))) for text in (forward, backward))
    assert [t.trial_id for t in one] == [t.trial_id for t in two]
    assert [config_hash(config_values(t)) for t in one] == [config_hash(config_values(t)) for t in two]
    assert "w1-amp_none-seed_1-r0" in [t.trial_id for t in one]


def test_config_hash_ignores_the_repeat_and_sees_every_setting():
    trials = expand(parse_study(GOOD))
    same = [t for t in trials if t.trial_id.startswith("w1-b2-amp_none-")]
    assert len({config_hash(config_values(t)) for t in same}) == 1 and len(same) == 2
    changed = parse_study(bad(model__c_opm=4))
    assert config_hash(config_values(expand(changed)[0])) != config_hash(config_values(trials[0]))


def test_resume_compares_every_setting_of_a_stored_row():
    trial = expand(parse_study(GOOD))[0]
    same = {**config_values(trial), "config_hash": "from-older-code"}  # e.g. hashed by older code
    assert changed_settings(same, trial) == []
    assert changed_settings({**same, "fused_optimizer": True}, trial) == []  # auto matches what ran
    assert changed_settings({**same, "c_m": 32}, trial) == ["c_m 32 -> 16"]
    assert changed_settings({**same, "steps": 9}, trial) == ["num_steps 9 -> 5"]
