"""The HTML report: written by the summary CLI, self-contained, and rendered by a real browser."""

from __future__ import annotations

import contextlib
import io
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


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of one small study, written once by the summary CLI for the tests to read."""
    root = tmp_path_factory.mktemp("report")
    rows = repeats([10, 12], num_workers=1) + repeats([19, 21], num_workers=2)
    # At 4 workers the loss did not fall (first_loss is 30): the report must flag it.
    rows += repeats([33, 37], num_workers=4, final_loss=31.0)
    write_study(root, rows)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        assert main([str(root / "s"), "--html"]) == 0
    assert "report.html" in said.getvalue()
    return root / "s" / SUMMARY_DIR / "report.html"


def test_report_is_one_self_contained_file(report):
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # Nothing to fetch: every image is inline data, and there is no script or external link.
    # throughput, speedup, efficiency, the stacked step breakdown and the trials' wall time by phase
    # (the trial rows carry the columns of both)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) == 5
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
    # the scaling table, the time-per-step table and where the trials' wall time went; the flags and
    # notes as text on the page
    assert dom.stdout.count("<table>") == 3 and "Figures" in dom.stdout
    assert "where a trial's wall time goes" in dom.stdout
    assert "Sanity flags" in dom.stdout and "4 workers: loss did not fall in 2 of 2" in dom.stdout
    assert "exposed all-reduce" in dom.stdout and "breakdown.png" in dom.stdout
    assert "phases.png" in dom.stdout and "the measured steps' share of the wall time" in dom.stdout
    # what the results ran on, from the trials table, before the tables
    text = " ".join(re.sub(r"<[^>]+>", " ", dom.stdout).split())
    assert "Ran on trials 6 (6 ok) machines node0 devices NVIDIA H100 80GB HBM3" in text
    assert "collectives nccl 2.27.3 torch 2.13.0 Ray 2.60.0" in text
    assert "ran 2026-01-01 12:00 to 12:01 UTC git commit abc1234" in text
    # an interval wider than its value says in words how many repeats would narrow it (test_summary.py
    # works out the 11 from published t quantiles)
    assert (
        "2 workers: efficiency 90.9 % ± 119.8 % (2 repeats) is a 95 % interval wider than its value: "
        "more repeats are needed; about 11 repeats of it and of its baseline would bring it under 10 % "
        "of the value (now 132 %), if the spread stays as measured." in text
    )
    assert (
        "Speedup over each group's baseline (its smallest worker count), one line per group; dashed:" in text
    )

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


def test_report_figures_take_the_page_width_with_a_caption_each(report, tmp_path):
    browser = chromium()
    # The report has no script; a copy with one measures the laid-out page and puts the figures'
    # widths over the body's content width into the title that --dump-dom prints.
    probe = tmp_path / "probe.html"
    measure = (
        "<script>const w = document.body.clientWidth"
        " - parseFloat(getComputedStyle(document.body).paddingLeft)"
        " - parseFloat(getComputedStyle(document.body).paddingRight);"
        "document.title = [...document.querySelectorAll('figure')].map("
        "f => (f.querySelector('img').getBoundingClientRect().width / w).toFixed(2)"
        " + ':' + (f.querySelector('figcaption').textContent.length > 40)).join(' ');</script>"
    )
    probe.write_text(report.read_text().replace("</body>", measure + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2000"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>(.*)</title>", dom.stdout).group(1)
    # throughput, speedup, efficiency, breakdown, phases: each as wide as the page (less its 1px border)
    assert title.split() == ["1.00:true"] * 5, title
