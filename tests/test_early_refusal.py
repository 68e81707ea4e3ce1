"""A study that cannot fit the embedded cluster is refused before Ray starts: its size is known in advance
(this machine's CPUs and the spare for trial drivers), so nobody waits for Ray to hear it."""

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.ray_helpers import TINY_STUDY_MODEL
from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.ray_session import SPARE_CPUS, describe_embedded, embedded_cpus
from tinyfold_ray.study import expand, parse_study
from tinyfold_ray.study.cli import main
from tinyfold_ray.study.runner import check_embedded

# More CPU workers than this machine has CPUs, whatever machine runs the test.
TOO_MANY = (os.cpu_count() or 1) + SPARE_CPUS + 1


def study(**over) -> dict:
    return {
        "name": "big",
        "resources": {"device": "cpu", "cpus_per_worker": 1},
        "model": TINY_STUDY_MODEL,
        "train": {"num_steps": 3, "warmup_steps": 2},
        "sweep": {"num_workers": [1, TOO_MANY]},
        **over,
    }


def test_the_cli_refuses_an_impossible_num_workers_in_one_line_without_starting_ray(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(study()))
    out = tmp_path / "out"
    # The CLI's own entry point, in a fresh interpreter; then: was Ray ever imported, how long it took.
    script = textwrap.dedent(
        f"""
        import sys, time
        from tinyfold_ray.cli import run_main
        from tinyfold_ray.study.cli import main
        start = time.monotonic()
        code = run_main("tinyfold_ray.study", lambda: main([{str(path)!r}, "--output", {str(out)!r}]))
        print(code, "ray" in sys.modules, round(time.monotonic() - start, 2))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    code, ray_imported, took = proc.stdout.split()
    assert (code, ray_imported) == ("2", "False"), proc.stderr
    assert float(took) < 5, took  # 10.6 s when Ray started first
    error = proc.stderr.strip()
    assert len(error.splitlines()) == 1, error
    assert f"trial w{TOO_MANY}-r0: {TOO_MANY} workers x {{CPU: 1}} do not fit this cluster" in error
    assert f"this is {describe_embedded(embedded_cpus())}" in error
    assert not out.exists()  # refused before the study's lock or any file


def test_refusal_uses_the_placement_rule_on_the_embedded_cpus():
    spec = parse_study(study(sweep={"num_workers": [1, 2]}), source="s.yaml")
    check_embedded(spec, expand(spec), 3, "here")  # 2 workers of 1 CPU fit 3 CPUs less the drivers' sliver
    with pytest.raises(StudySpecError, match=r"s.yaml: trial w2-r0: 2 workers x \{CPU: 2\} do not fit"):
        two_cpus = parse_study(study(sweep={"num_workers": [2]}, resources={"cpus_per_worker": 2}), "s.yaml")
        check_embedded(two_cpus, expand(two_cpus), 3, "here")
    with pytest.raises(StudySpecError, match=r"need 2 distinct nodes \(STRICT_SPREAD\)"):
        spread = parse_study(
            study(sweep={"num_workers": [2]}, resources={"placement": "STRICT_SPREAD"}), "s.yaml"
        )
        check_embedded(spread, expand(spread), 3, "here")


def test_a_study_for_a_cluster_in_ray_address_is_left_to_that_cluster(tmp_path, monkeypatch):
    import tinyfold_ray.ray_session

    class Joined(Exception):
        pass

    def connect(**kw):
        raise Joined

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setattr(tinyfold_ray.ray_session, "connect", connect)
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(study()))
    with pytest.raises(Joined):  # not refused by this machine's size: the cluster's is what counts
        main([str(path), "--output", str(tmp_path / "out")])


def test_the_embedded_cluster_is_described_with_its_spare_cpu(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert embedded_cpus() == 2 + SPARE_CPUS
    assert describe_embedded(3) == "embedded Ray with 3 logical CPUs (this machine's 2 + 1 for trial drivers)"
    assert describe_embedded(8) == "embedded Ray with 8 logical CPUs"  # a size given by the caller
