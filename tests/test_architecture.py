"""The shape of the package: no import cycles, small modules, numeric docstring examples that run.

The layering itself (ARCHITECTURE.md) is checked by ``lint-imports`` (contracts in pyproject.toml),
which the test command runs before pytest.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ctsl_hpc"
MAX_LINES = 400
# modules whose public numeric functions carry examples (CCC, the three losses, Welch, chunk bounds, ...)
DOCTESTED = (
    "ctsl_hpc.losses", "ctsl_hpc.evaluate.metrics", "ctsl_hpc.evaluate.protocol", "ctsl_hpc.predict",
    "ctsl_hpc.variants", "ctsl_hpc.data.corpora", "ctsl_hpc.config", "ctsl_hpc.config.files", "ctsl_hpc.snapshot",
    "ctsl_hpc.cost", "ctsl_hpc.train.flops", "ctsl_hpc.run_records", "ctsl_hpc.data.corpus", "ctsl_hpc.data.conditions",
    "ctsl_hpc.stage_jobs", "ctsl_hpc.train.batches",
)


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("ctsl_hpc")
    cycles = sorted(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        if imported.startswith("ctsl_hpc") and graph.chain_exists(importer=imported, imported=module)
    )
    assert not cycles, f"import cycles through: {cycles}"


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules: {long}"


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
