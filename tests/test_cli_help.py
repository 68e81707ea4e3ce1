"""What a newcomer reads in --help: every command and every choice is named there."""

import sys

import pytest

from tinyfold_ray.bench.__main__ import build_parser as bench_parser
from tinyfold_ray.train.cli import build_parser as train_parser


def test_bench_help_lists_the_gpu_check_among_its_commands():
    assert "{all,step,trial,scaling,gpu}" in bench_parser().format_help()


def test_train_help_shows_the_amp_choices_and_a_wrong_one_is_one_line(capsys):
    assert "--amp {none,bf16,fp16}" in train_parser().format_help()
    with pytest.raises(SystemExit) as exit_:
        train_parser().parse_args(["--amp", "fp8"])
    assert exit_.value.code == 2
    assert "invalid choice: 'fp8' (choose from 'none', 'bf16', 'fp16')" in capsys.readouterr().err


def test_bench_gpu_without_ray_or_wheels_names_the_command_that_builds_them(monkeypatch, tmp_path):
    from tinyfold_ray.bench.gpu import ensure_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as on a node without Ray
    note = ensure_ray(wheelhouse=tmp_path / "wheelhouse")
    assert note.startswith("missing") and "python -m tinyfold_ray.offline" in note
