"""``docs/configuration.md``: every key of the schema with its type, default and meaning, generated from the
schema's own field docs (:func:`ctsl_hpc.config.schema.key`); a test fails when the file is out of date.

    python -m ctsl_hpc.config.reference > docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Iterator
from typing import Any

from ctsl_hpc.config.schema import SLURM_STAGES, ExperimentConfig, SlurmConfig, SlurmStageConfig

HEADER = """# Configuration reference

Generated from the schema (`ctsl_hpc/config/schema.py`) by `python -m ctsl_hpc.config.reference`; do not edit.
A config file is YAML with these sections; any key can be given on the command line as a dotted
override (`train.epochs=3`, `slurm.students.gpus_per_node=4`, `eval.noisy_roots={snr0: /data/noisy0}`).
`python -m ctsl_hpc.launch config [--config F] [key=value ...]` prints the resolved configuration.
The shipped configs (`demo`, `paper`, `sweep`, `slurm-gpu`) set some of them: see their comments.
"""


def _type(annotation: Any) -> str:
    """A field's type for a Markdown table: ``str or None``, a choice as ``'rms' or 'msp'``."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)  # str(int) is "<class 'int'>"
    text = text.replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"Literal\[(.*?)\]", lambda m: " or ".join(p.strip() for p in m.group(1).split(",")), text)
    return text.replace(" | ", " or ")


def _default(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if not isinstance(value, str) else f'"{value}"'


def _rows(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every leaf of ``cls``; a section's rows follow its own."""
    instance, hints = cls(), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value) and not (cls is SlurmConfig and f.name in SLURM_STAGES):
            yield from _rows(type(value), f"{prefix}{f.name}.")
        elif cls is SlurmConfig and f.name in SLURM_STAGES:
            continue  # one table of stage overrides below
        else:
            yield f"{prefix}{f.name}", _type(hints[f.name]), _default(value), f.metadata.get("doc", "")


def markdown() -> str:
    """The whole reference, one table per top-level section."""
    lines = [HEADER]
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in _rows(ExperimentConfig):
        sections.setdefault(row[0].split(".")[0] if "." in row[0] else "(top level)", []).append(row)
    docs = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(ExperimentConfig)}
    for section, rows in sections.items():
        lines += [f"## {section}", ""] + ([docs[section].capitalize() + ".", ""] if docs.get(section) else [])
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k}` | `{t}` | `{d}` | {m.replace('|', '/')} |" for k, t, d, m in rows]
        lines.append("")
    lines += ["## slurm.<stage>", "",
              f"Each of the stages {', '.join(f'`{s}`' for s in SLURM_STAGES)} may override any `slurm` key for its jobs "
              "(`slurm.students.gpus_per_node: 4`); null inherits the default.", "",
              "| key | type | meaning |", "|---|---|---|"]
    lines += [f"| `slurm.<stage>.{k}` | `{t}` | {m} |" for k, t, _, m in _rows(SlurmStageConfig)
              if "." not in k]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
