"""The GPU check's batch sweep and reference rows, decided on CPU: the one-process runner is a fake."""

import json
import subprocess
import sys
import textwrap

import pytest

from tinyfold_ray.bench import gpu
from tinyfold_ray.bench.gpu import SKIPPED, Budget, batch_sweep, describe_run, reference_rows, sweep_rows

OUT_OF_MEMORY = "failed: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def _run(throughput: float, batch: int, mfu: float | None = 0.01) -> dict:
    return {
        "throughput_samples_per_sec": throughput,
        "step_time_median_s": batch / throughput,
        "peak_memory_bytes": batch * 2**28,
        "warmup_time_s": 3.0,
        "mfu": mfu,
    }


class FakeRunner:
    """Stands in for `one_process`: each run costs `cost_s` of a fake clock; memory runs out at
    `oom_batch`; like the real one it gives SKIPPED when it is allowed under 20 s."""

    def __init__(self, monkeypatch, *, oom_batch: int = 10**9, cost_s: float = 1.0):
        self.now = 0.0
        self.calls: list[tuple[str, int, str, float]] = []
        self.oom_batch, self.cost_s = oom_batch, cost_s
        monkeypatch.setattr(gpu.time, "monotonic", lambda: self.now)

    def __call__(self, amp, batch, mode, timeout):
        self.calls.append((amp, batch, mode, timeout))
        if timeout < 20:
            return SKIPPED
        self.now += self.cost_s
        if batch >= self.oom_batch:
            return OUT_OF_MEMORY
        return _run(100.0 * min(batch, 32), batch)  # saturates at batch 32


def test_the_sweep_doubles_the_batch_until_memory_runs_out_and_says_so(monkeypatch):
    fake = FakeRunner(monkeypatch, oom_batch=128)
    runs = {("bf16", 4, "none"): _run(400.0, 4), ("bf16", 8, "none"): _run(800.0, 8)}
    batch_sweep(runs, "none", Budget(1000), keep=0.0, time_run=fake)
    # Batches 4 and 8 were timed already (the matrix); the sweep goes on from 16 and stops at the OOM.
    assert [batch for _, batch, _, _ in fake.calls] == [16, 32, 64, 128]
    assert all(amp == "bf16" and mode == "none" for amp, _, mode, _ in fake.calls)
    rows = {r.figure: r.value for r in sweep_rows(runs, "none")}
    assert rows["batch sweep, bf16, eager, batch 128"].startswith(
        "out of memory: failed: torch.OutOfMemoryError"
    )
    assert rows["batch sweep, bf16, eager, batch 128"].endswith("(the sweep ends here)")
    assert "batch sweep, bf16, eager, batch 256" not in rows
    assert "MFU 1.00 %" in rows["batch sweep, bf16, eager, batch 64"]
    # The best batch is the fastest, not the largest that fitted.
    assert rows["batch sweep, bf16, eager: best batch"].startswith("batch 32: 3200.0 samples/s")


def test_the_sweep_ends_when_the_budget_is_spent_keeping_what_later_rows_need(monkeypatch):
    fake = FakeRunner(monkeypatch, cost_s=30.0)
    runs: dict = {}
    batch_sweep(runs, gpu.GRAPH, Budget(150), keep=50.0, time_run=fake)
    # 100 s to spend: 4, 8 and 16 take 30 s each, then 10 s are left, too few for a run.
    assert [batch for _, batch, _, _ in fake.calls] == [4, 8, 16, 32]
    assert fake.calls[-1][3] == pytest.approx(10.0)
    rows = sweep_rows(runs, gpu.GRAPH)
    assert rows[3].value == f"{SKIPPED} (the sweep ends here)"
    assert rows[-1].figure == "batch sweep, bf16, CUDA graph of the whole step: best batch"
    # With time again (a later phase), the skipped batch is timed and the sweep goes on.
    fake.now = 0.0
    batch_sweep(runs, gpu.GRAPH, Budget(1000), keep=0.0, time_run=fake)
    assert [batch for _, batch, _, _ in fake.calls[4:]] == list(gpu.SWEEP_BATCHES[3:])


def test_every_row_gives_its_ratio_to_the_reference_and_the_fastest_batch_4_mode_is_named():
    reference = {"throughput_samples_per_sec": 40.0, "step_time_median_s": 0.1}
    runs = {
        ("none", 4, "none"): _run(100.0, 4, mfu=None),
        ("bf16", 4, gpu.GRAPH): _run(500.0, 4),
        ("bf16", 8, gpu.GRAPH): _run(900.0, 8),
    }
    assert "100.0 samples/s, 2.50x v1" in describe_run(runs[("none", 4, "none")], reference)
    assert "MFU n/a" in describe_run(runs[("none", 4, "none")], reference)
    rows = {r.figure: r.value for r in reference_rows(reference, runs)}
    assert rows["TinyOpenFold v1 (reference)"].startswith("40.0 samples/s")
    assert rows["fastest at batch 4 / TinyOpenFold v1"] == "12.5x (CUDA graph of the whole step)"
    failed = reference_rows("failed: ConfigError: no TinyOpenFold", runs)
    assert [r.value for r in failed] == ["failed: ConfigError: no TinyOpenFold"]


FAKE_REFERENCE = textwrap.dedent(
    """
    import torch

    def setup_deterministic_environment():
        torch.use_deterministic_algorithms(True)

    class TinyOpenFoldConfig:
        width = 3

    class TinyOpenFold(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.layer = torch.nn.Linear(cfg.width, 1)

        def forward(self, msa, pair, target):
            return {"loss": ((self.layer(msa) - target) ** 2).mean(dim=-1)}

    class ProteinDataset:
        def __init__(self, cfg):
            self.cfg = cfg

        def get_batch(self, n):
            return torch.randn(n, self.cfg.width), torch.randn(n, 2), torch.randn(n, 1)
    """
)


def test_the_reference_runs_alone_and_prints_its_figures_as_json(tmp_path):
    path = tmp_path / "tiny_openfold_v1.py"
    path.write_text(FAKE_REFERENCE)
    command = [sys.executable, "-m", "tinyfold_ray.bench.reference", str(path), "--device", "cpu"]
    done = subprocess.run(
        [*command, "--batch-size", "6", "--num-steps", "3", "--warmup-steps", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["batch_size"] == 6 and figures["num_params"] == 4
    assert figures["throughput_samples_per_sec"] == pytest.approx(6 / figures["step_time_median_s"])
