"""Every command the README and the guides show still works: a renamed subcommand, flag, config key,
extra or experiment fails here, not in a newcomer's shell.

Reads each ```bash block of README.md and docs/*.md: every ``python -m ctsl_hpc.launch`` / ``ctsl``
command parses with the CLI's own parser, its ``key=value`` overrides name keys of the schema, its
``--config`` exists, and the dry runs whose inputs exist here (the embedded demo's) run; every ``pip
install`` argument is a valid requirement, path or flag, with extras the package declares; every
``models:/`` name is one a shipped config registers."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import metadata
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement

from ctsl_hpc.config import CONFIG_DIR, ConfigError, load_config
from ctsl_hpc.launch.__main__ import build_parser, main
from ctsl_hpc.track.registry import model_name
from ctsl_hpc.variants import TEACHER

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CLI = ("python -m ctsl_hpc.launch", "ctsl")
PLACEHOLDER = re.compile(r"[<$]|/path/|/scratch/|/data/")  # inputs that exist only on a researcher's machine


def shell_lines(doc: Path) -> list[str]:
    """The commands of ``doc``'s bash blocks: continuations joined, comments and prompts dropped."""
    lines, block = [], None
    for line in doc.read_text().splitlines():
        if line.strip().startswith("```"):
            block = [] if block is None and line.strip() in ("```bash", "```sh", "```shell") else None
            continue
        if block is not None:
            if block and block[-1].endswith("\\"):
                block[-1] = block[-1][:-1] + " " + line.strip()
            else:
                block.append(line.strip())
            lines.extend([] if block[-1].endswith("\\") else [block.pop()])
    return [" ".join(shlex.split(line, comments=True)) for line in lines if line and not line.startswith("#")]


def commands(prefixes: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(where, arguments) of every command in the docs starting with one of ``prefixes``."""
    found = []
    for doc in DOCS:
        for line in shell_lines(doc):
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                for prefix in prefixes:
                    if part == prefix or part.startswith(prefix + " "):
                        found.append((f"{doc.relative_to(ROOT)}: {part}", shlex.split(part[len(prefix):])))
    return found


CLI_COMMANDS = commands(CLI)


def test_the_docs_show_cli_commands_and_pip_installs():
    assert len(CLI_COMMANDS) >= 10 and len(commands(("pip install",))) >= 2  # the parser above found them


@pytest.mark.parametrize(("where", "args"), CLI_COMMANDS, ids=[w for w, _ in CLI_COMMANDS])
def test_each_documented_cli_command_parses_and_its_keys_exist(where, args):
    if args in (["--help"], ["-h"], ["--version"]):
        return
    parsed = build_parser().parse_args(args)  # an unknown subcommand or flag: SystemExit(2)
    overrides = getattr(parsed, "overrides", None) or []
    assert all("=" in o for o in overrides), f"{where}: not key=value: {overrides}"
    try:
        load_config(getattr(parsed, "config", None), overrides)
    except ConfigError as exc:  # placeholder values may fail validation here; a key that does not exist may not
        assert not str(exc).startswith(("unknown config key", "no config")), f"{where}: {exc}"


def _inputs_exist_here(args: list[str]) -> bool:
    """The embedded demo's inputs (a synthesised corpus, the shipped noise) exist on every machine."""
    if PLACEHOLDER.search(" ".join(args)):
        return False
    parsed = build_parser().parse_args(args)
    return load_config(getattr(parsed, "config", None), parsed.overrides or []).data.corpus == "synthetic"


DRY_RUNS = [(w, a) for w, a in CLI_COMMANDS if "--dry-run" in a and _inputs_exist_here(a)]


@pytest.mark.parametrize(("where", "args"), DRY_RUNS, ids=[w for w, _ in DRY_RUNS])
def test_each_documented_dry_run_with_inputs_here_runs(where, args, tmp_path, capsys):
    assert main([*args, "--workdir", str(tmp_path / "w")]) == 0, f"{where}: {capsys.readouterr().err[-2000:]}"
    assert not (tmp_path / "w").exists()


def test_each_documented_pip_install_is_valid():
    extras = set(metadata("ctsl_hpc").get_all("Provides-Extra"))
    for where, args in commands(("pip install", "python -m pip install")):
        for arg in args:
            if arg.startswith(("-", "http")):
                continue  # a flag, or an index URL's value
            path = re.fullmatch(r"(\.|/[^\[\]]*|\./[^\[\]]*)(\[([\w,-]+)\])?", arg)
            if path:
                named = set(path.group(3).split(",")) if path.group(3) else set()
            else:
                try:
                    requirement = Requirement(arg)
                except InvalidRequirement as exc:
                    pytest.fail(f"{where}: {arg!r} is not a requirement: {exc}")
                named = requirement.extras if requirement.name.replace("_", "-") == "ctsl-hpc" else set()
            assert named <= extras, f"{where}: extras {sorted(named - extras)} not declared by the package"


def test_each_documented_model_uri_names_a_model_a_shipped_config_registers():
    registered = set()
    for config in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = load_config(str(config), [])
        experiment = cfg.tracking.experiment or cfg.name
        variants = {TEACHER, *cfg.student.variants, *(cfg.tune.final_variants or ())}
        registered |= {model_name(experiment, v) for v in variants}
    uris = [(doc, m.group(1)) for doc in DOCS for m in re.finditer(r"models:/([^@/\s`'\"]+)", doc.read_text())]
    assert uris, "the docs show no models:/ URI"
    for doc, name in uris:
        assert name in registered, f"{doc.relative_to(ROOT)}: models:/{name} is registered by no shipped config"
