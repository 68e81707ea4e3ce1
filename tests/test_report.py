"""The HTML report: written by the summary CLI, self-contained, and rendered by a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.test_summary import repeats, write_study
from tinyfold_ray.results.schema import SUMMARY_DIR
from tinyfold_ray.summary import main


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        # .ci/run installs Debian's chromium, so CI never skips this; a laptop without one may.
        pytest.skip("no Chromium on PATH (apt-get install chromium)")
    return found


@pytest.fixture
def report(tmp_path, capsys):
    rows = repeats([10, 12], num_workers=1) + repeats([19, 21], num_workers=2)
    # At 4 workers the loss did not fall (first_loss is 30): the report must flag it.
    rows += repeats([33, 37], num_workers=4, final_loss=31.0)
    write_study(tmp_path, rows)
    assert main([str(tmp_path / "s"), "--html"]) == 0
    assert "report.html" in capsys.readouterr().out
    return tmp_path / "s" / SUMMARY_DIR / "report.html"


def test_report_is_one_self_contained_file(report):
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # Nothing to fetch: every image is inline data, and there is no script or external link.
    # throughput, speedup, efficiency and the stacked breakdown (the trial rows carry its columns)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) == 4
    assert not re.search(r'(src|href)="(https?:|//|/)', text) and "<script" not in text
    # 2 workers: 20 / 11 samples/s = 1.818; delta method, both points std sqrt(2) over 2 repeats:
    # 1.818 * sqrt(2 / (2 * 20**2) + 2 / (2 * 11**2)) = 0.18864, times t(0.975, 1 dof) 12.706 = 2.397
    assert "<th>speedup</th>" in text and "<td>1.82x ± 2.40</td>" in text


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the scaling table and the time-per-step table; the flags and notes as text on the page
    assert dom.stdout.count("<table>") == 2 and "Figures" in dom.stdout
    assert "Sanity flags" in dom.stdout and "4 workers: loss did not fall in 2 of 2" in dom.stdout
    assert "exposed all-reduce" in dom.stdout and "breakdown.png" in dom.stdout

    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    # Tables and text are grey; only the decoded plots put saturated colour on the page.
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert np.count_nonzero(saturation > 0.3) > 500
