import shutil
import signal
from pathlib import Path

import pytest

from tests.ray_helpers import start_shared_ray, stop_shared_ray
from tinyfold_ray.config import ModelConfig
from tinyfold_ray.ray_session import RAY_PROCESS_ENV, environ_kept

# A test that runs trials on the session's shared embedded Ray asks for this fixture (conftest's below,
# or a module's own of this name that enters ray_helpers.embedded_ray).
SHARED_RAY_FIXTURE = "ray_cluster"
# A module whose tests share a cluster of the module's own (ray.cluster_utils.Cluster) names its
# module-scoped fixture so: that Ray stays from one of its tests to the next.
OWN_CLUSTER_FIXTURE = "own_cluster"


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    """Odd small sizes, so a transposed or mixed-up axis fails loudly."""
    return ModelConfig(
        c_m=12,
        c_z=20,
        num_blocks=2,
        num_heads_msa=3,
        num_heads_pair=5,
        msa_transition_dim=24,
        pair_transition_dim=28,
        c_opm=6,
        num_seqs=5,
        seq_len=7,
        pair_input_dim=11,
    )


@pytest.fixture
def ray_cluster():
    """The session's shared embedded Ray (ray_helpers.start_shared_ray)."""
    start_shared_ray()


def _ray_results(home: Path) -> set[str]:
    """What ~/ray_results (Ray Train's and Tune's default storage) holds in `home`."""
    folder = home / "ray_results"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home directory of this process's own, where ~/ray_results would appear for what the test runs
    here; after the test it must hold nothing but Ray's token. The shared Ray's processes (Tune's trial
    drivers) keep the real home, whose ~/ray_results must gain nothing either. The token is the real
    home's, as every home has one once Ray ran there: a cluster started after another in one process
    authenticates as the first did (ray_session.RAY_PROCESS_ENV) and reads the token from the home."""
    real = Path.home()
    before = _ray_results(real)
    path = tmp_path / "home"
    token = real / ".ray" / "auth_token"
    if token.exists():
        (path / ".ray").mkdir(parents=True)
        shutil.copy(token, path / ".ray" / "auth_token")
    path.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(path))
    yield path
    assert sorted(p.name for p in path.iterdir()) in ([], [".ray"]), "a run left files in the home"
    assert _ray_results(real) <= before, "a run left a folder in the real ~/ray_results"


@pytest.fixture(autouse=True)
def _process_state_restored():
    """Every test leaves the process environment and its Ctrl-C handler as it found them: no variable
    set by one test (or by the code it runs) reaches a later test or the subprocesses it starts, and a
    study run in-process leaves no Ray Tune SIGINT handler behind (Tune installs one per run and keeps
    it; run_study puts the caller's back). Ray's process-wide settings (ray_session.RAY_PROCESS_ENV)
    stay, as connect() keeps them: the first cluster this process started set them for every later one.
    """
    on_sigint = signal.getsignal(signal.SIGINT)
    with environ_kept(keep=RAY_PROCESS_ENV):
        yield
    signal.signal(signal.SIGINT, on_sigint)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every test on the shared embedded Ray first, one after another, so that it starts once (and
    pays its first, slower Ray Train start-up once); the rest keep their order after them."""
    items.sort(key=lambda item: SHARED_RAY_FIXTURE not in getattr(item, "fixturenames", ()))


def _same_ray(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether `nextitem` uses the Ray that `item` used: both ask for the shared one, or both are tests
    of one module that share that module's own cluster."""
    if nextitem is None:
        return False
    uses = {f for f in (SHARED_RAY_FIXTURE, OWN_CLUSTER_FIXTURE) if f in getattr(item, "fixturenames", ())}
    if OWN_CLUSTER_FIXTURE in uses and item.module is not nextitem.module:
        uses.discard(OWN_CLUSTER_FIXTURE)
    return bool(uses & set(getattr(nextitem, "fixturenames", ())))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Keep a Ray only from one test to the next that uses it (the shared one, or a module's own
    cluster): any other test runs without an initialised Ray in this process, whatever the order the
    tests run in."""
    try:
        return (yield)
    finally:
        if not _same_ray(item, nextitem):
            stop_shared_ray()
