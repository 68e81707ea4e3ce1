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
    rows += repeats([33, 37], num_workers=4)
    write_study(tmp_path, rows)
    assert main([str(tmp_path / "s"), "--html"]) == 0
    assert "report.html" in capsys.readouterr().out
    return tmp_path / "s" / SUMMARY_DIR / "report.html"


def test_report_is_one_self_contained_file(report):
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # Nothing to fetch: every image is inline data, and there is no script or external link.
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) == 3
    assert not re.search(r'(src|href)="(https?:|//|/)', text) and "<script" not in text
    assert "<th>speedup</th>" in text and "<td>1.82x</td>" in text  # 2 workers: 20 / 11 samples/s


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table>") == 1 and "Figures" in dom.stdout

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
