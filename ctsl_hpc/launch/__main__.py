"""The command line: ``python -m ctsl_hpc.launch <command>``.

``sweep`` runs (or continues) an experiment: with no arguments, the embedded demo in this process.
``report`` rebuilds the tables and plots from saved scores. ``sync`` replays spooled MLflow
records. ``mlflow-server`` starts a tracking server for a cluster. ``predict`` scores audio files
with a saved model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from ctsl_hpc.config import ConfigError, load_config
from ctsl_hpc.data.audio import AudioError
from ctsl_hpc.data.corpus import CorpusError
from ctsl_hpc.data.noise import NoiseError
from ctsl_hpc.pipeline import ConfigMismatch

# Bad input the user can fix: reported as one line naming the file or field, no traceback.
InputError = (CorpusError, AudioError, NoiseError, ConfigMismatch)

log = logging.getLogger("ctsl_hpc")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("urllib3", "matplotlib", "filelock", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (default: configs/demo.yaml, the embedded demo)")
    parser.add_argument("--workdir", help="work directory (default: the config's workdir)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=3")


def _load(args: argparse.Namespace):
    cfg = load_config(args.config, args.overrides)
    if args.workdir:
        cfg.workdir = args.workdir
    return cfg


def cmd_sweep(args: argparse.Namespace) -> int:
    from ctsl_hpc import pipeline
    from ctsl_hpc.launch import jobs

    cfg = _load(args)
    ws = pipeline.Workspace.open(cfg)
    started = time.time()
    ws.data.check()  # bad corpus, audio or noise fails here, before any training
    jobs.teacher_job(ws.root)
    for variant in cfg.student.variants:
        jobs.student_job(ws.root, variant)
    report_dir = jobs.evaluate_job(ws.root)
    print((report_dir / "table1.md").read_text())
    print(f"work directory: {ws.root}")
    print(f"report: {report_dir} ({time.time() - started:.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ctsl_hpc.evaluate.report import build_report
    from ctsl_hpc.launch.jobs import open_workspace

    ws = open_workspace(args.workdir)
    for path in build_report(ws.report_dir, alpha=ws.cfg.eval.alpha):
        print(path)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from ctsl_hpc.launch.jobs import open_workspace
    from ctsl_hpc.track import replay_spool

    ws = open_workspace(args.workdir)
    sent = replay_spool(ws.root, ws.cfg.tracking.uri)
    print(f"replayed {sent} spooled record(s) to the tracking store")
    return 0


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    from ctsl_hpc.track import run_server

    return run_server(args.backend_store_uri, args.artifacts_destination, args.host, args.port)


def cmd_predict(args: argparse.Namespace) -> int:
    from ctsl_hpc.predict import run_cli

    return run_cli(
        args.model, args.inputs, args.out, args.json, args.window_s, args.hop_s, args.batch_size, args.skip_bad
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctsl_hpc.launch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="run or continue an experiment (default: the embedded demo)")
    _config_args(sweep)
    sweep.set_defaults(func=cmd_sweep)

    report = commands.add_parser("report", help="rebuild tables and plots from <workdir>/report/scores.csv")
    report.add_argument("--workdir", required=True)
    report.set_defaults(func=cmd_report)

    sync = commands.add_parser("sync", help="replay MLflow records spooled while the server was away")
    sync.add_argument("--workdir", required=True)
    sync.set_defaults(func=cmd_sync)

    server = commands.add_parser("mlflow-server", help="start an MLflow tracking server for a cluster")
    server.add_argument("--backend-store-uri", required=True, help="e.g. sqlite:////shared/mlflow.db or postgresql://...")
    server.add_argument("--artifacts-destination", required=True, help="a folder on shared storage")
    server.add_argument("--host", default="0.0.0.0")
    server.add_argument("--port", type=int, default=5000)
    server.set_defaults(func=cmd_mlflow_server)

    predict = commands.add_parser("predict", help="arousal/dominance/valence (1..7) of audio files")
    predict.add_argument("--model", required=True, help="a saved model directory (or a finished training stage)")
    predict.add_argument("inputs", nargs="+", help="audio files, folders (recursive) or CSVs with a path column")
    predict.add_argument("--out", default="predictions.csv", help="CSV output (default: predictions.csv)")
    predict.add_argument("--json", help="also write the predictions as JSON here")
    predict.add_argument("--window-s", type=float, default=10.0, help="chunk length in seconds (default 10)")
    predict.add_argument("--hop-s", type=float, default=5.0, help="chunk hop in seconds (default 5)")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--skip-bad", action="store_true", help="report unreadable files and go on")
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow configures its logger at import
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"input error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
