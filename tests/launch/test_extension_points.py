"""Extension points: a new variant is one spec in the table, a new scheduler one backend plus its registration.

Each test adds its toy through that one place alone and runs a tiny sweep to a complete Table 1.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Sequence

import torch

from ctsl_hpc import variants
from ctsl_hpc.evaluate.report import read_table1
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.launch.backends import Backend, register
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.launch.task import Task
from ctsl_hpc.model import load_weights
from ctsl_hpc.run_records import read_history
from ctsl_hpc.workdir import Workdir

CONDITIONS = {"clean", "snr10", "snr5", "snr0"}
RUNNER = """
import pickle, sys
from ctsl_hpc.launch.task import run_task
task = pickle.load(sys.stdin.buffer)
run_task(task)
"""


def _complete_table1(workdir: Workdir, expected: list[str]) -> dict:
    table = read_table1(workdir.report.table1_json)
    assert list(table) == expected
    for variant, cells in table.items():
        assert set(cells) == CONDITIONS, variant
        assert all(set(c) == {"arousal", "dominance", "valence"} for c in cells.values()), variant
    return table


def test_a_toy_variant_needs_one_entry_in_the_spec_table(tiny_overrides, tmp_path, capsys):
    toy = variants.register(variants.VariantSpec("RH+CL", train_backbone=False, terms=(variants.CL,)))
    workdir = Workdir(tmp_path / "w")
    overrides = [*tiny_overrides(workdir.root), "student.variants=[RM,RH+CL]", "tracking.enabled=false"]
    assert main(["sweep", *overrides]) == 0
    _complete_table1(workdir, ["original", "RM", toy.name])
    history = [r.to_dict() for r in read_history(workdir.student(toy.name).history).epochs]
    assert all(epoch["losses"]["cl"] > 0 and epoch["losses"]["tl"] == 0 for epoch in history)  # its term, weighted
    teacher = load_weights(workdir.teacher.summary().best_dir)
    student = load_weights(workdir.student(toy.name).summary().best_dir)
    backbone = [k for k in teacher if k.startswith("backbone.")]
    assert backbone and all(torch.equal(teacher[k], student[k]) for k in backbone)  # head only, as its spec says
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher if k.startswith("head."))


class SubprocessBackend(Backend):
    """A toy scheduler: each task in a fresh Python process of its own, one after the other."""

    name = "subprocess-test"
    blocking = True

    def submit(self, stage: str, tasks: Sequence[Task], after: Sequence[str]) -> list[str]:
        ids = []
        for task in tasks:
            proc = subprocess.Popen([sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            self.registry.new_record(task.key, task.stage, task.label or None, self.name, str(proc.pid))
            _, err = proc.communicate(pickle.dumps(task), timeout=600)
            if proc.returncode:
                raise RuntimeError(f"{task.key} failed in process {proc.pid}: {err.decode()[-2000:]}")
            ids.append(str(proc.pid))
        return ids


def test_a_toy_backend_needs_one_class_and_its_registration(tiny_overrides, tmp_path, capsys):
    register(SubprocessBackend)
    workdir = Workdir(tmp_path / "w")
    overrides = [*tiny_overrides(workdir.root), "student.variants=[RM,RM+TL]", "tracking.enabled=false"]
    assert main(["sweep", "--cluster", SubprocessBackend.name, *overrides]) == 0
    _complete_table1(workdir, ["original", "RM", "RM+TL"])
    records = Registry(workdir.root).all()
    assert {r.key for r in records} == {"prepare", "teacher", "student/RM", "student/RM+TL", "eval"}
    assert all(r.backend == SubprocessBackend.name and r.state == "COMPLETED" for r in records)
    pids = {r.job_id for r in records}
    assert len(pids) == 5 and str(os.getpid()) not in pids  # every task in a real process of its own
    assert "| RM+TL |" in capsys.readouterr().out
