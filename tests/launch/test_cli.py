"""The command line's conventions: one table of subcommands, --version, config, -v anywhere, plain help."""

from __future__ import annotations

import secrets

import yaml

from ctsl_hpc import __version__
from ctsl_hpc.launch.__main__ import COMMANDS, build_parser, main


def test_every_subcommand_comes_from_the_one_table_and_shows_in_the_help(capsys):
    parser = build_parser()
    help_text = parser.format_help()
    for command in COMMANDS:
        assert (command.name in help_text) != command.hidden, command.name
        args = parser.parse_args([command.name, *_required(command.name)])
        assert args.func is command.run
    assert "``" not in help_text and ":mod:" not in help_text  # no reST in the terminal


def _required(name: str) -> list[str]:
    return {"status": ["--workdir", "w"], "logs": ["--workdir", "w", "teacher"], "cancel": ["--workdir", "w"],
            "resume": ["--workdir", "w"], "report": ["--workdir", "w"], "sync": ["--workdir", "w"],
            "mlflow-server": ["--backend-store-uri", "sqlite:///x.db", "--artifacts-destination", "a"],
            "predict": ["--model", "m", "a.wav"], "standin-backbone": ["d"], "ray-node": ["--workdir", "w"]}.get(name, [])


def test_version_and_verbose_before_or_after_the_subcommand(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"ctsl_hpc {__version__}"
    parser = build_parser()
    assert parser.parse_args(["-v", "status", "--workdir", "w"]).verbose
    assert parser.parse_args(["status", "--workdir", "w", "-v"]).verbose
    assert not getattr(parser.parse_args(["status", "--workdir", "w"]), "verbose", False)


def test_config_prints_the_resolved_config_with_its_secrets_masked(capsys):
    token = secrets.token_hex(8)
    assert main(["config", "--config", "paper", "train.epochs=3", f"slurm.env={{HF_TOKEN: {token}}}"]) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert values["train"]["epochs"] == 3 and values["model"]["backbone"] == "facebook/wav2vec2-large-robust"
    assert token not in printed and values["slurm"]["env"]["HF_TOKEN"] == "***"
