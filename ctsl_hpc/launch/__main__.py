"""The command line: ``python -m ctsl_hpc.launch <command>`` (installed as ``ctsl``).

``sweep`` runs (or continues) an experiment: with no arguments, the embedded demo in this process;
``--cluster slurm`` submits it; ``--tune`` searches the loss weights with Ray Tune after the teacher. ``status``, ``logs``,
``cancel`` and ``resume`` manage a submitted sweep. ``report`` rebuilds the tables and plots from
saved scores. ``sync`` replays spooled MLflow records. ``mlflow-server`` starts a tracking server
for a cluster. ``predict`` scores audio files with a saved model. ``standin-backbone`` writes a
randomly initialised ``facebook/wav2vec2-large-robust`` for ``model.backbone`` where the hub is out of reach.
``pretrain`` pre-trains the demo's tiny wav2vec2 (self-supervised, on noisy speech the demo never
uses) into a backbone folder.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ctsl_hpc import __version__
from ctsl_hpc.atomic_io import RecordError
from ctsl_hpc.config import ConfigError
from ctsl_hpc.launch.backends import backend_names
from ctsl_hpc.launch.commands import (
    cmd_cancel,
    cmd_config,
    cmd_logs,
    cmd_mlflow_server,
    cmd_predict,
    cmd_pretrain,
    cmd_ray_node,
    cmd_report,
    cmd_resume,
    cmd_standin_backbone,
    cmd_status,
    cmd_sweep,
    cmd_sync,
)
from ctsl_hpc.launch.manage import ManageError
from ctsl_hpc.launch.slurm_cli import SlurmError
from ctsl_hpc.locks import WorkdirLocked
from ctsl_hpc.logs import setup_logging
from ctsl_hpc.preflight import InputProblems
from ctsl_hpc.track.tags import command_tags, exported_run_tags
from ctsl_hpc.train.interface import TrainingInterrupted
from ctsl_hpc.workdir import ConfigMismatch

STOPPED = 3  # exit status of a sweep stopped on request (SIGUSR2) with its checkpoints saved


def _input_errors() -> tuple[type[Exception], ...]:
    """Bad input the user can fix: reported as one line naming the file or field, no traceback.

    Imported lazily: the management commands must not pay for the data modules' imports."""
    from ctsl_hpc.data.audio import AudioError
    from ctsl_hpc.data.corpus import CorpusError
    from ctsl_hpc.data.noise import NoiseError

    return (CorpusError, AudioError, NoiseError, ConfigMismatch)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML or a shipped config's name (default: demo, the embedded demo)")
    parser.add_argument("--workdir", help="work directory (default: the config's workdir)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=3")


def _sweep_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument("--tune", action="store_true", help="the Ray Tune search (configs/sweep.yaml: tune.*) after "
                        "the teacher, then the best point's students and their report")
    parser.add_argument("--cluster", choices=backend_names(), default="local",
                        help="local: run here (default); slurm: submit the job graph and return")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs, resources and cost; run nothing")


def _workdir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the sweep's work directory")


def _status_args(parser: argparse.ArgumentParser) -> None:
    _workdir_arg(parser)
    parser.add_argument("--json", action="store_true", help="print the jobs (and a search's trials) as JSON")


def _logs_args(parser: argparse.ArgumentParser) -> None:
    _workdir_arg(parser)
    parser.add_argument("stage", help="teacher, students, eval, tune, a variant (RM+TL) or a key (student/RM+TL)")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing until the job(s) finish")
    parser.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)


def _cancel_args(parser: argparse.ArgumentParser) -> None:
    _workdir_arg(parser)
    parser.add_argument("stage", nargs="?", help="only this stage, variant or key (default: all)")


def _resume_args(parser: argparse.ArgumentParser) -> None:
    _workdir_arg(parser)
    parser.add_argument("--cluster", choices=backend_names(),
                        help="where to run what is left (default: where the sweep was started)")
    parser.add_argument("overrides", nargs="*", help="where and how it runs from now on, e.g. slurm.nodes=1 "
                        "slurm.partition=long (runtime keys only)")


def _server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend-store-uri", required=True, help="e.g. sqlite:////shared/mlflow.db or postgresql://...")
    parser.add_argument("--artifacts-destination", required=True, help="a folder on shared storage")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--auth-config", help="an MLflow basic_auth.ini: every client must log in (docs/mlflow.md)")
    parser.add_argument("--no-auth", action="store_true",
                        help="listen beyond this machine without a login (only where the network is yours alone)")
    parser.add_argument("--tls-cert", help="a PEM certificate: serve HTTPS (clients trust it: MLFLOW_TRACKING_SERVER_CERT_PATH)")
    parser.add_argument("--tls-key", help="the certificate's PEM key")


def _predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a saved model directory (or a finished training stage), "
                        "or a registered model: models:/<experiment>-<variant>@best (or .../<version>)")
    parser.add_argument("--tracking-uri", help="where models:/ URIs are looked up (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("inputs", nargs="+", help="audio files, folders (recursive) or CSVs with a path column")
    parser.add_argument("--out", default="predictions.csv", help="CSV output (default: predictions.csv)")
    parser.add_argument("--json", help="also write the predictions as JSON here")
    parser.add_argument("--window-s", type=float, default=10.0, help="chunk length in seconds (default 10)")
    parser.add_argument("--hop-s", type=float, default=5.0, help="chunk hop in seconds (default 5)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-bad", action="store_true", help="report unreadable files and go on")


def _standin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="the Hugging Face folder to write (config.json, model.safetensors)")
    parser.add_argument("--seed", type=int, default=0)


def _pretrain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/pretrain/backbone", help="the backbone folder to write")
    parser.add_argument("--workdir", default="runs/pretrain", help="where the demo and pre-training corpora are built")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="optimiser steps (default: PretrainSettings.steps)")
    parser.add_argument("--batch-size", type=int, help="crops per step (default: PretrainSettings.batch_size)")
    parser.add_argument("--tts", type=int, default=600, help="espeak-ng utterances (other voices and texts than the demo's)")
    parser.add_argument("--noise-minutes", type=float, default=10.0, help="noise clips mixed in (not the demo's test noise)")


def _ray_node_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the sweep's work directory, on shared storage")
    parser.add_argument("--config", help="experiment YAML (default: the config saved in --workdir)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as tune.num_samples=32")


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, help line, arguments and what it runs (``hidden``: left out of the help)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    hidden: bool = False


COMMANDS: tuple[Command, ...] = (
    Command("sweep", "run or continue an experiment (default: the embedded demo)", _sweep_args, cmd_sweep),
    Command("config", "print the resolved configuration as YAML (secrets masked)", _config_args, cmd_config),
    Command("status", "the sweep's jobs: state, elapsed, requeues, epoch, dev CCC, GPU-h; a search's trials",
            _status_args, cmd_status),
    Command("logs", "print a stage's job logs (teacher, students, eval, tune, RM+TL, ...)", _logs_args, cmd_logs),
    Command("cancel", "cancel the sweep's queued and running jobs", _cancel_args, cmd_cancel),
    Command("resume", "resubmit what failed or never finished; skip what is done", _resume_args, cmd_resume),
    Command("report", "rebuild Table 1, Table 2 and the plots from <workdir>/report", _workdir_arg, cmd_report),
    Command("sync", "replay MLflow records spooled while the server was away", _workdir_arg, cmd_sync),
    Command("mlflow-server", "start an MLflow tracking server for a cluster", _server_args, cmd_mlflow_server),
    Command("predict", "arousal/dominance/valence (1..7) of audio files", _predict_args, cmd_predict),
    Command("standin-backbone", "write a randomly initialised facebook/wav2vec2-large-robust (no hub; ~1.3 GB)",
            _standin_args, cmd_standin_backbone),
    Command("pretrain", "pre-train the demo's tiny wav2vec2 (self-supervised, on noisy speech)", _pretrain_args,
            cmd_pretrain),
    # one task per node of a hand-made allocation (launch/ray-on-slurm.sh)
    Command("ray-node", "", _ray_node_args, cmd_ray_node, hidden=True),
)


def _plain(text: str) -> str:
    """A docstring for the terminal: without reST's double backticks and roles."""
    return re.sub(r":\w+:`([^`]*)`", r"\1", text.replace("``", ""))


def build_parser() -> argparse.ArgumentParser:
    """The CLI from :data:`COMMANDS`; ``-v`` is accepted before or after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log debug lines too (before or after the subcommand)")
    parser = argparse.ArgumentParser(prog="python -m ctsl_hpc.launch", description=_plain(__doc__), parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ctsl_hpc {__version__}")
    visible = ",".join(c.name for c in COMMANDS if not c.hidden)
    commands = parser.add_subparsers(dest="command", required=True, metavar=f"{{{visible}}}")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, parents=[common], **({} if command.hidden else {"help": command.help}),
                                  description=command.help or None)
        command.arguments(sub)
        sub.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow configures its logger at import
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    # the runs this command opens, and those of the jobs it submits, name it (a ray-node keeps its sweep's)
    command = {} if args.command == "ray-node" else command_tags(parser.prog, argv)
    try:
        with exported_run_tags(command):
            return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except SlurmError as exc:
        print(f"slurm error: {exc}", file=sys.stderr)
        return 2
    except (ManageError, WorkdirLocked, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InputProblems as exc:  # every problem found before anything was queued, one line each
        for problem in exc.problems:
            print(f"input error: {problem}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only storage, permissions: the path and why, nothing more
        print(f"i/o error: {exc.strerror or exc}: {exc.filename or '(no path given)'}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:
        print(f"stopped on request ({exc}): run the same command again to continue", file=sys.stderr)
        return STOPPED
    except Exception as exc:
        if isinstance(exc, _input_errors()):
            print(f"input error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
