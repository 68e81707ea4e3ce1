"""The offline install's builder: its plan (which wheels, for which platform tags) and Ray's repack,
all without the network."""

import base64
import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tinyfold_ray.errors import ConfigError
from tinyfold_ray.offline import (
    RAY_DROPPED,
    Target,
    build,
    download_commands,
    project_requirements,
    strip_wheel,
)

NODE = Target(python="3.12", platform="manylinux_2_28_x86_64")


def test_platforms_reach_back_to_older_glibc_and_the_legacy_names():
    tags = NODE.platforms()
    assert tags[0] == "manylinux_2_28_x86_64"  # the newest first: pip prefers the earlier tag
    assert {
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
        "manylinux1_x86_64",
    } <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags  # too new for the node's glibc
    arm = Target(python="3.11", platform="manylinux_2_34_aarch64").platforms()
    assert arm[0] == "manylinux_2_34_aarch64" and arm[-2:] == [
        "manylinux_2_17_aarch64",
        "manylinux2014_aarch64",
    ]
    assert not any(t.startswith(("manylinux1", "manylinux2010")) for t in arm)  # never existed for ARM


@pytest.mark.parametrize(
    "python, platform", [("3", "manylinux_2_28_x86_64"), ("3.12", "macosx_14_0_arm64"), ("3.12", "x86_64")]
)
def test_a_target_that_is_not_a_linux_python_is_refused_naming_the_flag(python, platform):
    with pytest.raises(ConfigError, match="--python|--platform"):
        Target(python=python, platform=platform)


def _flag_values(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, c in enumerate(command) if c == flag]


def test_the_download_is_binary_wheels_for_the_node_and_leaves_torch_to_it(tmp_path):
    requirements = ["torch>=2.4", "ray[train,tune]==2.60.0", "pandas>=2.0"]
    (command,) = download_commands(requirements, NODE, tmp_path, python="py")
    assert command[:6] == ["py", "-m", "pip", "download", "--dest", str(tmp_path)]
    assert "--only-binary=:all:" in command and "--no-deps" not in command  # pip resolves for the node
    assert _flag_values(command, "--python-version") == ["3.12"]
    assert _flag_values(command, "--implementation") == ["cp"]
    assert _flag_values(command, "--platform") == NODE.platforms()
    assert command[-2:] == ["ray[train,tune]==2.60.0", "pandas>=2.0"]
    assert not any("torch" in c for c in command)


def test_torch_when_asked_comes_from_its_own_index_in_a_download_of_its_own(tmp_path):
    url = "https://download.pytorch.org/whl/rocm6.4"
    requirements = ["torch>=2.4", "ray[train,tune]==2.60.0"]
    rest, torch = download_commands(requirements, NODE, tmp_path, with_torch=True, torch_index_url=url)
    assert "--index-url" not in rest and rest[-1] == "ray[train,tune]==2.60.0"
    assert _flag_values(torch, "--index-url") == [url] and torch[-1] == "torch>=2.4"
    assert _flag_values(torch, "--platform") == NODE.platforms()


METADATA = """\
Metadata-Version: 2.1
Name: tinyfold-ray
Version: 0.1.0
Requires-Python: >=3.10
Provides-Extra: amd
Provides-Extra: test
Requires-Dist: torch>=2.4
Requires-Dist: ray[train,tune]==9.9.9
Requires-Dist: tomli; python_version < "3.11"
Requires-Dist: amdsmi; extra == "amd"
Requires-Dist: pytest>=8; extra == "test"

"""


def test_requirements_are_the_wheels_own_with_markers_judged_for_the_node():
    assert project_requirements(METADATA, NODE, ["amd"]) == ["torch>=2.4", "ray[train,tune]==9.9.9", "amdsmi"]
    old = Target(python="3.10", platform="manylinux_2_28_x86_64")
    assert project_requirements(METADATA, old) == ["torch>=2.4", "ray[train,tune]==9.9.9", "tomli"]
    with pytest.raises(ConfigError, match="--extras 'nvidia': tinyfold-ray offers amd, test"):
        project_requirements(METADATA, NODE, ["nvidia"])
    with pytest.raises(ConfigError, match="--python 3.9: tinyfold-ray needs Python >=3.10"):
        project_requirements(METADATA, Target(python="3.9", platform="manylinux_2_28_x86_64"))


def _sha(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A wheel holding `files` and a true RECORD, like pip's own."""
    name = path.name.split("-")[0]
    version = path.name.split("-")[1]
    record = f"{name}-{version}.dist-info/RECORD"
    files = {
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-any\n",
        **files,
    }
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    for member, data in files.items():
        writer.writerow([member, _sha(data), len(data)])
    writer.writerow([record, "", ""])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in files.items():
            z.writestr(member, data)
        z.writestr(record, lines.getvalue())
    return path


def record_problems(path: Path) -> list[str]:
    """What a wheel's RECORD says that its members contradict (missing, unlisted, wrong hash or size)."""
    with zipfile.ZipFile(path) as z:
        (record,) = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
        rows = {r[0]: r for r in csv.reader(io.StringIO(z.read(record).decode())) if r}
        problems = [f"unlisted {n}" for n in z.namelist() if n not in rows]
        for member, (_, digest, size) in rows.items():
            if member == record:
                continue
            if member not in z.namelist():
                problems.append(f"missing {member}")
            elif (digest, int(size)) != (_sha(z.read(member)), len(z.read(member))):
                problems.append(f"wrong hash {member}")
    return problems


RAY_FILES = {
    "ray/__init__.py": b"version = '9.9.9'\n",
    "ray/jars/ray_dist.jar": b"J" * 50_000,
    "ray/dashboard/client/build/index.html": b"<html>" + b"x" * 20_000,
    "ray/dashboard/modules/job/job_head.py": b"# the job server stays\n",
    # A vendored package's own dist-info: not the wheel's RECORD, and left as it is.
    "ray/thirdparty_files/idna-3.15.dist-info/RECORD": b"idna/__init__.py,,\n",
    "ray-9.9.9.dist-info/METADATA": b"Metadata-Version: 2.1\nName: ray\nVersion: 9.9.9\n",
}


def test_rays_wheel_loses_its_jars_and_web_client_and_stays_a_valid_installable_wheel(tmp_path):
    # Tagged for any platform, so that pip here installs it.
    wheel = make_wheel(tmp_path / "ray-9.9.9-py3-none-any.whl", RAY_FILES)
    assert record_problems(wheel) == []
    saved = strip_wheel(wheel, RAY_DROPPED)
    assert saved > 0 and not list(tmp_path.glob("*.partial"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        kept = {n: z.read(n) for n in names if not n.endswith(".dist-info/RECORD") or n.count("/") > 1}
    assert not any(n.startswith(("ray/jars/", "ray/dashboard/client/build/")) for n in names)
    assert kept == {n: d for n, d in RAY_FILES.items() if not n.startswith(RAY_DROPPED)} | {
        "ray-9.9.9.dist-info/WHEEL": kept["ray-9.9.9.dist-info/WHEEL"]
    }
    assert record_problems(wheel) == []
    # pip accepts it (installing offline, as on the node).
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site)]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    assert (site / "ray" / "dashboard" / "modules" / "job" / "job_head.py").is_file()
    assert not (site / "ray" / "jars").exists()


def fake_pip(tmp_path: Path, requested: list[list[str]]):
    """Stands in for pip: the project's wheel with METADATA above, then the downloads it is asked for."""

    def run(command: list[str]) -> None:
        requested.append(command)
        dest = Path(command[command.index("--wheel-dir" if "wheel" in command else "--dest") + 1])
        if "wheel" in command:
            make_wheel(
                dest / "tinyfold_ray-0.1.0-py3-none-any.whl",
                {"tinyfold_ray-0.1.0.dist-info/METADATA": METADATA.encode()},
            )
            return
        make_wheel(dest / "ray-9.9.9-cp312-cp312-manylinux2014_x86_64.whl", RAY_FILES)
        make_wheel(dest / "numpy-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl", {"numpy/__init__.py": b""})
        make_wheel(
            dest / "pydantic_core-2.5.0-cp312-cp312-manylinux_2_28_x86_64.whl", {"pydantic_core/x.py": b""}
        )

    return run


def test_the_build_asks_for_the_pinned_ray_repacks_it_and_leaves_out_what_the_node_has(tmp_path):
    dest = tmp_path / "wheelhouse"
    dest.mkdir()
    (dest / "stale-0.1-py3-none-any.whl").write_bytes(b"from an earlier build")
    requested: list[list[str]] = []
    wheels = build(dest, NODE, node_has=["NumPy"], run=fake_pip(tmp_path, requested), say=lambda line: None)
    wheel_step, download = requested
    assert wheel_step[3:5] == ["wheel", "--no-deps"]
    assert download[-1] == "ray[train,tune]==9.9.9" and "torch>=2.4" not in download
    assert sorted(w.name for w in wheels) == [
        "pydantic_core-2.5.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "ray-9.9.9-cp312-cp312-manylinux2014_x86_64.whl",
        "tinyfold_ray-0.1.0-py3-none-any.whl",
    ]  # numpy left out (named as the node has it), the earlier build replaced whole
    with zipfile.ZipFile(dest / "ray-9.9.9-cp312-cp312-manylinux2014_x86_64.whl") as z:
        assert not any(n.startswith(RAY_DROPPED) for n in z.namelist())
    assert not (tmp_path / "wheelhouse.partial").exists()


def test_the_build_refuses_a_folder_that_holds_more_than_wheels(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds more than wheels"):
        build(tmp_path, NODE, run=fake_pip(tmp_path, []), say=lambda line: None)
    assert (tmp_path / "notes.txt").read_text() == "mine"
