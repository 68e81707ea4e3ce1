"""Time a user-supplied copy of TinyOpenFold v1 (tiny_openfold_v1.py) the way its own script does.

Its loop, per measured step: a batch drawn on the host and copied to the device, forward, backward and
optimiser step each bracketed by a device synchronisation, deterministic algorithms forced on, and
`loss.item()` read back. No code of the reference is shipped here: pass the path of your copy.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from tinyfold_ray.cli import ArgumentParser, run_main
from tinyfold_ray.config import DEVICES
from tinyfold_ray.device import resolve_backend, synchronize, torch_device
from tinyfold_ray.errors import ConfigError


def load_reference(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--reference {path}: no such file (a copy of TinyOpenFold's tiny_openfold_v1.py)")
    spec = importlib.util.spec_from_file_location("tiny_openfold_v1_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("TinyOpenFoldConfig", "TinyOpenFold", "ProteinDataset", "setup_deterministic_environment"):
        if not hasattr(module, name):
            raise ConfigError(f"--reference {path}: has no {name}; is it TinyOpenFold v1?")
    return module


def time_reference(path, *, batch_size: int, num_steps: int, warmup_steps: int, device: torch.device):
    """Median step time (s) and parameter count of the reference at its default sizes."""
    ref = load_reference(path)
    ref.setup_deterministic_environment()
    try:
        cfg = ref.TinyOpenFoldConfig()
        model = ref.TinyOpenFold(cfg).to(device)
        data = ref.ProteinDataset(cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)

        def step():
            times = []
            synchronize(device)
            start = time.perf_counter()
            msa, pair, target = (t.to(device) for t in data.get_batch(batch_size))
            out = model(msa, pair, target)
            loss = out["loss"].mean()
            synchronize(device)
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            loss.backward()
            synchronize(device)
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad()
            synchronize(device)
            times.append(time.perf_counter() - start)
            loss.item()
            return sum(times)

        for _ in range(warmup_steps):
            step()
        step_times = sorted(step() for _ in range(num_steps))
        return step_times[len(step_times) // 2], sum(p.numel() for p in model.parameters())
    finally:
        torch.use_deterministic_algorithms(False)


def main(argv: list[str] | None = None) -> int:
    """Time the reference alone and print its figures as one JSON line (`bench gpu` runs this)."""
    p = ArgumentParser(prog="python -m tinyfold_ray.bench.reference", description=main.__doc__)
    p.add_argument("path", help="a copy of TinyOpenFold's tiny_openfold_v1.py")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--device", choices=DEVICES, default="auto")
    args = p.parse_args(argv)
    device = torch_device(resolve_backend(args.device))
    median, num_params = time_reference(
        args.path,
        batch_size=args.batch_size,
        num_steps=args.num_steps,
        warmup_steps=args.warmup_steps,
        device=device,
    )
    figures = {
        "batch_size": args.batch_size,
        "step_time_median_s": median,
        "throughput_samples_per_sec": args.batch_size / median,
        "num_params": num_params,
        "device": str(device),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("tinyfold_ray.bench.reference", main))
