"""Shared fixtures: offline Hugging Face, a small synthetic corpus built once per test session, tiny
models, one torch thread, a real MLflow server (``tests/mlflow_fixtures.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.seeds import fresh_seed

pytest_plugins = ["tests.mlflow_fixtures"]  # the session-wide `mlflow_server` fixture

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread per process: make test runs three workers on a 2-core machine, and the processes they start (sweeps,
# Slurm jobs, ranks) inherit this. More threads than cores spin in OpenMP and BLAS waits, burning the CPU they share.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray binds the machine's own interface address unless told it is not a cluster: keep every Ray
# service of the tests (local and the one-node Slurm allocation) on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A 40-utterance espeak-ng corpus with its train/dev/test noise pools (built in about a second)."""
    from ctsl_hpc.data.synthetic import build_demo_corpus

    return build_demo_corpus(tmp_path_factory.mktemp("corpus"), n_utterances=40, seed=3, noise_minutes=(1.0, 0.5, 0.5))


FIGURES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def figures(request) -> list[str]:
    """Lines a test measured (times, memory), printed in the summary at the end of the run."""
    return request.config.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter, config):
    if config.stash.get(FIGURES, None):
        terminalreporter.section("measured")
        for line in config.stash[FIGURES]:
            terminalreporter.write_line(line)


WORKERS = pytest.StashKey[dict]()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the pytest-xdist controller: which workers ran each module's tests (a module is never split)."""
    worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None)
    if worker is not None and report.when == "call":
        config = report.node.config
        config.stash.setdefault(WORKERS, {}).setdefault(report.nodeid.split("::")[0], set()).add(worker)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker: hand the figures to the controller, which prints the summary. In the controller:
    fail the run when a module's tests ran in several workers (its costly fixtures were then made once per worker:
    pytest-xdist's loadgroup stopped grouping)."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["figures"] = session.config.stash.get(FIGURES, [])
        return
    split = {group: sorted(w) for group, w in session.config.stash.get(WORKERS, {}).items() if len(w) > 1}
    if split:
        session.config.stash.setdefault(FIGURES, []).append(f"MODULES SPLIT ACROSS WORKERS (fixtures made twice): {split}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_testnodedown(node, error) -> None:
    """In the pytest-xdist controller: collect a worker's figures."""
    node.config.stash.setdefault(FIGURES, []).extend(getattr(node, "workeroutput", {}).get("figures", []))


# The fixtures that cost the most: the tests that use one run in one pytest-xdist worker, so that it is made
# once (make test runs three workers, --dist loadgroup), heaviest first (--no-loadscope-reorder keeps this order).
SHARED_FIXTURES = {"multinode_cluster": "multinode-cluster", "slurm_cluster": "one-node-cluster",
                   "standin_backbone": "standin-backbone"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests for pytest-xdist's ``loadgroup``: those sharing a costly session fixture together, every
    other module's tests together (its module-scoped fixtures then run once); those groups first."""
    order = list(SHARED_FIXTURES.values())
    by_module: dict[str, str] = {}  # a module with a test of a shared fixture joins its group whole (its other
    for item in items:  # tests start, stop or wait for what the fixture made)
        shared = [g for fixture, g in SHARED_FIXTURES.items() if fixture in item.fixturenames]
        module = item.nodeid.split("::")[0]
        if shared and module not in by_module:
            by_module[module] = shared[0]
    groups = {item: by_module.get(item.nodeid.split("::")[0], item.nodeid.split("::")[0]) for item in items}
    for item, name in groups.items():
        item.add_marker(pytest.mark.xdist_group(name))
    items.sort(key=lambda item: order.index(groups[item]) if groups[item] in order else len(order))


@pytest.fixture(scope="session")
def standin_backbone(tmp_path_factory):
    """A random-weight ``facebook/wav2vec2-large-robust`` (24 layers, ~1.3 GB) written once per session by the
    package's command, deleted at the end of the session."""
    import shutil

    from ctsl_hpc.launch.__main__ import main

    folder = tmp_path_factory.mktemp("standin") / "wav2vec2-large-robust"
    assert main(["standin-backbone", str(folder)]) == 0
    yield folder
    shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_overrides(small_corpus):
    """``tiny_overrides(workdir)``: config overrides for a fast pipeline run on ``small_corpus``."""
    return lambda workdir: _tiny_overrides(small_corpus, workdir)


def _tiny_overrides(corpus, workdir) -> list[str]:
    return [
        f"workdir={workdir}",
        "data.corpus=csv",
        f"data.manifest={corpus.manifest}",
        f"noise.train={corpus.noise_train}",
        f"noise.dev={corpus.noise_dev}",
        f"noise.test={corpus.noise_test}",
        "data.max_seconds=2.0",
        "train.epochs=2",
        "train.batch_size=4",
        "student.epochs=2",
        "eval.n_groups=2",
        "eval.top_k=1",
        "model.backbone=tiny",  # random init: the smallest model; the demo's tiny-ssl has its own tests
        "model.freeze_feature_encoder=false",
        "model.head_hidden=16",
        "model.tiny.hidden_size=16",
        "model.tiny.intermediate_size=32",
        "model.tiny.conv_dim=16",
        "model.tiny.heads=2",
        "model.tiny.num_layers=1",
        "model.num_layers=1",
    ]


@pytest.fixture
def one_thread() -> None:
    """torch on one thread: float comparisons stay reproducible, and CI machines have 2 cores."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(directory, seed)``: a randomly initialised demo-sized model saved in ``directory``, its
    head scaled up so that predictions vary (CCCs then differ between groups and models)."""
    import torch

    from ctsl_hpc.config import load_config
    from ctsl_hpc.model import build_model, save_model

    def write(directory: Path, seed: int) -> Path:
        torch.manual_seed(seed)
        model = build_model(load_config(None, []).model)
        with torch.no_grad():
            model.head[-1].weight.mul_(5.0)
        return save_model(model, directory, None)

    return write


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A freshly seeded generator; the seed is printed so a failure can be replayed (tests/seeds.py)."""
    return np.random.default_rng(fresh_seed(request.node.name))


@pytest.fixture
def fresh_venv(tmp_path):
    """``fresh_venv(name)``: a new virtual environment without ctsl_hpc that reuses this one's installed
    dependencies (a ``.pth`` line naming our site-packages: its own ``.pth`` files, such as this
    checkout's editable install, are not read from there). Returns the new interpreter."""
    import site
    import subprocess
    import sys
    import sysconfig

    def make(name: str = "venv") -> Path:
        root = tmp_path / name
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
        python = root / "bin" / "python"
        purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        ours = sysconfig.get_path("purelib") if sys.prefix != sys.base_prefix else site.getsitepackages()[0]
        (Path(purelib) / "_ctsl_test_deps.pth").write_text(ours + "\n")
        return python

    return make


def pip_install(python: Path, *args: str) -> None:
    """``pip install ARGS`` into the environment of ``python`` (our pip drives it); the ctsl_hpc our
    dependencies line shows (this checkout's) counts as not installed there."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--ignore-installed",
                    "--no-build-isolation", *args], check=True, timeout=300)
