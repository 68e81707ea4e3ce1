"""The step-time breakdown: marks inside a step, the compute-only reference, the split."""

import time

import pytest
import torch

from tinyfold_ray.train.breakdown import StepMarks, compute_reference_s, split_steps


def test_marks_time_each_part_of_a_step_on_cpu():
    marks = StepMarks(torch.device("cpu"))
    marks.begin()
    a = torch.randn(300, 300)
    for _ in range(20):
        a = a @ a / 300
    marks.mark()
    marks.mark()
    fwd_bwd, optimizer = marks.durations()
    assert len(fwd_bwd) == len(optimizer) == 1
    assert fwd_bwd[0] > optimizer[0] >= 0
    marks.clear()
    assert marks.durations() == ([], [])


def test_split_gives_what_exceeds_the_compute_reference_to_communication():
    parts = split_steps([0.30, 0.25, 0.18], [0.02, 0.02, 0.03], reference_s=0.20)
    assert parts["compute_time_s"] == [0.20, 0.20, 0.18]
    assert parts["comm_exposed_s"] == pytest.approx([0.10, 0.05, 0.0])
    assert parts["optimizer_time_s"] == [0.02, 0.02, 0.03]
    alone = split_steps([0.3], [0.02], reference_s=None)  # one worker: nothing to all-reduce
    assert alone["compute_time_s"] == [0.3] and alone["comm_exposed_s"] == [0.0]


def test_compute_reference_is_the_median_step_outside_the_all_reduce_after_the_first():
    calls = []
    # The first step (re)compiles for the no_sync path: slow. Of the rest, the median is about 0 s; with
    # the first step counted it would be 75 ms, and the mean of the rest is 60 ms.
    step_s = [0.2, 0.0, 0.0, 0.0, 0.15, 0.15]

    class FakeDDP(torch.nn.Module):
        syncing = True

        def no_sync(self):
            model = self

            class Off:
                def __enter__(self):
                    model.syncing = False

                def __exit__(self, *exc):
                    model.syncing = True

            return Off()

    model = FakeDDP()

    def forward_backward(batch):
        calls.append((batch, model.syncing))
        time.sleep(step_s[batch])

    reference = compute_reference_s(forward_backward, lambda: len(calls), model, torch.device("cpu"))
    assert 0 < reference < 0.04
    assert [syncing for _, syncing in calls] == [False] * len(step_s) and model.syncing


def test_a_study_profile_setting_reaches_every_trial_and_is_not_a_setting_column():
    from tinyfold_ray.results.schema import CONFIG_COLUMNS
    from tinyfold_ray.study.expand import expand
    from tinyfold_ray.study.spec import parse_study

    raw = {"name": "p", "profile": True, "sweep": {"num_workers": [1, 2]}}
    assert [t.profile for t in expand(parse_study(raw))] == [True, True]
    assert not any(t.profile for t in expand(parse_study({**raw, "profile": False})))
    assert "profile" not in CONFIG_COLUMNS  # a trace does not change what a trial measures
