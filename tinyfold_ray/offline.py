"""`python -m tinyfold_ray.offline`: the wheels a GPU node without network needs, built where there is one.

Run from a clone in which the project is installed (the quick start's `.venv`):

    .venv/bin/python -m tinyfold_ray.offline --python 3.12 --platform manylinux_2_28_x86_64

It builds this project's own wheel, downloads the binary wheels of its dependencies (Ray at the
version pyproject.toml pins) for the node's Python and platform, leaves torch out unless asked (a GPU
node brings a torch built for its CUDA or ROCm), repacks Ray's wheel without what a Python-only node
never uses, and writes the folder `wheelhouse/` at once when everything is there. Then, on the node,
with the clone and `wheelhouse/` copied to it (NODE_INSTALL, printed at the end):

    python3 -m venv --system-site-packages .venv && .venv/bin/python -m pip install --no-index --find-links wheelhouse tinyfold-ray
"""

from __future__ import annotations

import copy
import csv
import io
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from tinyfold_ray.cli import ArgumentParser, run_main
from tinyfold_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = "wheelhouse"
# Ray's wheel is by far the largest (79 MB for 2.60). A node that runs Ray from Python never loads
# these: the Java jars serve Ray's Java API and the web client is the dashboard's browser UI (the
# dashboard's Python server, which `ray job submit` talks to, stays).
RAY_DROPPED = ("ray/jars/", "ray/dashboard/client/build/")
# The `--system-site-packages` venv lets pip find the node's own torch (and anything else it has).
NODE_INSTALL = (
    "python3 -m venv --system-site-packages .venv && "
    ".venv/bin/python -m pip install --no-index --find-links {dest} {project}"
)
# The glibc a manylinux tag family first named, for the legacy aliases (PEP 600's table).
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_(\w+)$")


def canonical_name(name: str) -> str:
    """A project's name as PEP 503 compares it: `PyYAML`, `pydantic_core` -> `pyyaml`, `pydantic-core`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The canonical project name a requirement string starts with (`ray[train]==2.60.0` -> `ray`)."""
    return canonical_name(re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group())


@dataclass(frozen=True, kw_only=True)
class Target:
    """The node the wheels are for."""

    python: str
    """The node's Python as MAJOR.MINOR, e.g. "3.12" (`python3 --version` there)."""
    platform: str
    """The node's newest manylinux tag, manylinux_2_<glibc minor>_<arch> (glibc from `ldd --version`)."""

    def __post_init__(self):
        if not re.fullmatch(r"3\.\d+", self.python):
            raise ConfigError(f"--python {self.python!r}: give the node's Python as 3.MINOR, e.g. 3.12")
        if not _MANYLINUX.match(self.platform):
            raise ConfigError(
                f"--platform {self.platform!r}: give the node's manylinux tag, manylinux_2_<glibc minor>_<arch>, "
                "e.g. manylinux_2_28_x86_64 (GPU nodes run Linux)"
            )

    def platforms(self) -> list[str]:
        """Every platform tag the node accepts, newest first: pip takes `--platform` values literally and
        would otherwise miss the many wheels tagged for an older glibc (Ray's are manylinux2014)."""
        major, newest, arch = _MANYLINUX.match(self.platform).groups()
        # PEP 599/600: x86 wheels go back to manylinux1 (glibc 2.5), other architectures to 2.17.
        oldest = 5 if arch in ("x86_64", "i686") else 17
        tags = []
        for minor in range(int(newest), oldest - 1, -1):
            tags.append(f"manylinux_{major}_{minor}_{arch}")
            if major == "2" and minor in _LEGACY_MANYLINUX and (minor == 17 or oldest == 5):
                tags.append(f"{_LEGACY_MANYLINUX[minor]}_{arch}")
        return tags

    def pip_flags(self) -> list[str]:
        """pip download's flags for this node (pip accepts a foreign platform only for binary wheels)."""
        flags = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp"]
        for tag in self.platforms():
            flags += ["--platform", tag]
        return flags

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values on the node, so a requirement's markers are judged for it, not for here."""
        arch = _MANYLINUX.match(self.platform).group(3)
        return {
            "python_version": self.python,
            "python_full_version": f"{self.python}.0",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "platform_machine": arch,
            "platform_system": "Linux",
            "sys_platform": "linux",
            "os_name": "posix",
        }


def this_machine() -> Target:
    """The target when the node matches the machine the build runs on."""
    libc, version = platform.libc_ver()
    if libc != "glibc" or not version:
        raise ConfigError(
            "cannot tell this machine's glibc: pass --platform manylinux_2_<minor>_<arch> for the node "
            "(`ldd --version` there gives the minor)"
        )
    minor = version.split(".")[1]
    return Target(
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        platform=f"manylinux_2_{minor}_{platform.machine()}",
    )


def project_requirements(metadata: str, target: Target, extras: Sequence[str] = ()) -> list[str]:
    """The requirements the node must satisfy, from the METADATA of the project's wheel: those whose
    markers hold on the node with the given extras, each as `name[extras]specifier`."""
    # Imported here, not at the top: `bench gpu` reads DEFAULT_DEST on nodes that may lack packaging.
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    meta = Parser().parsestr(metadata)
    known = meta.get_all("Provides-Extra") or []
    for extra in extras:
        if extra not in known:
            raise ConfigError(f"--extras {extra!r}: {meta['Name']} offers {', '.join(known) or 'none'}")
    requires_python = SpecifierSet(meta.get("Requires-Python") or "")
    if f"{target.python}.0" not in requires_python:
        raise ConfigError(f"--python {target.python}: {meta['Name']} needs Python {requires_python}")
    wanted = []
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        env = target.marker_environment()
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ["", *extras]):
            req.marker = None
            wanted.append(str(req))
    return wanted


def download_commands(
    requirements: Sequence[str],
    target: Target,
    dest: Path,
    *,
    with_torch: bool = False,
    torch_index_url: str | None = None,
    python: str = sys.executable,
) -> list[list[str]]:
    """The pip download invocations that fill `dest` with every wheel the node needs (dependencies
    resolved for the node). torch gets an invocation of its own, since its CUDA and ROCm builds live on
    PyTorch's own indexes; without `with_torch` it is left to the node."""
    is_torch = [requirement_name(r) == "torch" for r in requirements]
    base = [python, "-m", "pip", "download", "--dest", str(dest), *target.pip_flags()]
    commands = [[*base, *(r for r, torch in zip(requirements, is_torch) if not torch)]]
    if with_torch:
        index = ["--index-url", torch_index_url] if torch_index_url else []
        commands.append([*base, *index, *(r for r, torch in zip(requirements, is_torch) if torch)])
    return commands


def strip_wheel(path: Path, drop: Sequence[str]) -> int:
    """Rewrite the wheel at `path` without its members under the `drop` prefixes, and without their
    lines in its RECORD (the other lines, hashes included, stay true: their bytes are copied as they
    are). Written beside and renamed over, so a failure leaves the original. Returns the bytes saved."""
    before = path.stat().st_size
    tmp = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w") as zout:
        (record,) = [n for n in zin.namelist() if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
        for info in zin.infolist():
            if info.filename == record or info.filename.startswith(tuple(drop)):
                continue
            # A copy of the entry: writing fills in offsets and sizes, which must not touch the source's.
            entry = copy.copy(info)
            with (
                zin.open(info) as src,
                zout.open(entry, "w", force_zip64=info.file_size > zipfile.ZIP64_LIMIT) as out,
            ):
                shutil.copyfileobj(src, out, 2**20)
        rows = csv.reader(io.StringIO(zin.read(record).decode()))
        kept = io.StringIO()
        csv.writer(kept, lineterminator="\n").writerows(
            r for r in rows if r and not r[0].startswith(tuple(drop))
        )
        zout.writestr(copy.copy(zin.getinfo(record)), kept.getvalue())
    tmp.replace(path)
    return before - path.stat().st_size


def build(
    dest: Path,
    target: Target,
    *,
    extras: Sequence[str] = (),
    with_torch: bool = False,
    torch_index_url: str | None = None,
    node_has: Sequence[str] = (),
    run: Callable[[list[str]], object] = lambda c: subprocess.run(c, check=True),
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Fill `dest` with the node's wheels (see the module's docstring); return them.

    Everything lands in a folder beside `dest` first and replaces `dest` only when complete, so an
    interrupted download never leaves a folder that looks ready.
    """
    if dest.exists() and any(not (p.is_file() and p.suffix == ".whl") for p in dest.iterdir()):
        raise ConfigError(f"{dest} holds more than wheels: give --dest a new folder or one this tool made")
    if not (ROOT / "pyproject.toml").is_file():
        raise ConfigError(f"no pyproject.toml in {ROOT}: run this from a clone of tinyfold-ray")
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    def step(command: list[str]) -> None:
        say("$ " + " ".join(command))
        run(command)

    # The project's own wheel first: its METADATA is pyproject.toml's dependency list as of now.
    step([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(work), str(ROOT)])
    (own,) = work.glob("tinyfold_ray-*.whl")
    with zipfile.ZipFile(own) as whl:
        (meta,) = [n for n in whl.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        requirements = project_requirements(whl.read(meta).decode(), target, extras)
    for command in download_commands(
        requirements, target, work, with_torch=with_torch, torch_index_url=torch_index_url
    ):
        step(command)
    for ray in work.glob("ray-*.whl"):
        saved = strip_wheel(ray, RAY_DROPPED)
        say(f"{ray.name}: {saved / 1e6:.1f} MB smaller without {' and '.join(RAY_DROPPED)}")
    left_out = {canonical_name(n) for n in node_has}
    for wheel in work.glob("*.whl"):
        if canonical_name(wheel.name.split("-")[0]) in left_out:
            wheel.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    say(f"{dest}: {len(wheels)} wheels, {size / 1e6:.1f} MB, for Python {target.python} on {target.platform}")
    return wheels


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m tinyfold_ray.offline",
        description="Build the folder of wheels a GPU node without network installs this project from.",
        epilog="On the node, from the clone with the folder beside it: "
        + NODE_INSTALL.format(dest=DEFAULT_DEST, project="tinyfold-ray"),
    )
    p.add_argument("--dest", type=Path, default=Path(DEFAULT_DEST), help="the folder to write (replaced)")
    p.add_argument("--python", default=None, help="the node's Python, e.g. 3.12 (default: this one's)")
    p.add_argument(
        "--platform",
        default=None,
        help="the node's manylinux_2_<glibc minor>_<arch> tag, e.g. manylinux_2_28_x86_64 (default: this machine's)",
    )
    p.add_argument("--extras", nargs="+", default=[], help="the project's extras to include, e.g. amd")
    p.add_argument(
        "--with-torch", action="store_true", help="include torch (default: the node brings its own build)"
    )
    p.add_argument(
        "--torch-index-url",
        default=None,
        help="where torch comes from with --with-torch, e.g. https://download.pytorch.org/whl/rocm6.4",
    )
    p.add_argument(
        "--node-has",
        nargs="+",
        default=[],
        metavar="NAME",
        help="packages the node already has: resolved for, then left out of the folder",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.torch_index_url and not args.with_torch:
        raise ConfigError("--torch-index-url needs --with-torch")
    here = this_machine() if args.python is None or args.platform is None else None
    target = Target(python=args.python or here.python, platform=args.platform or here.platform)
    dest = args.dest.resolve()
    build(
        dest,
        target,
        extras=args.extras,
        with_torch=args.with_torch,
        torch_index_url=args.torch_index_url,
        node_has=args.node_has,
    )
    project = f"'tinyfold-ray[{','.join(args.extras)}]'" if args.extras else "tinyfold-ray"
    print("copy the clone and this folder to the node; there, from the clone, with no network:")
    print("  " + NODE_INSTALL.format(dest=args.dest, project=project))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("tinyfold_ray.offline", main))
