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


def _input_errors() -> tuple[type[Exception], ...]:
    """Bad input the user can fix: reported as one line naming the file or field, no traceback.

    Imported lazily: the management commands must not pay for torch's import."""
    from ctsl_hpc.data.audio import AudioError
    from ctsl_hpc.data.corpus import CorpusError
    from ctsl_hpc.data.noise import NoiseError
    from ctsl_hpc.workdir import ConfigMismatch

    return (CorpusError, AudioError, NoiseError, ConfigMismatch)

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
    if args.tune:  # the Ray Tune search over the CTSL loss weights and noise minutes, then Table 1
        from ctsl_hpc.launch.ray_cluster import SWEEP_CONFIG, sweep_tune

        args.config = args.config or str(SWEEP_CONFIG)
        return sweep_tune(_load(args), getattr(args, "cluster", "local"))
    cfg = _load(args)
    if args.dry_run:
        from ctsl_hpc.launch.slurm import dry_run_lines

        print("\n".join(dry_run_lines(Path(cfg.workdir).resolve(), cfg, args.cluster)))
        return 0
    return _sweep(cfg, args.cluster)


def _sweep(cfg, cluster: str) -> int:
    """Run the sweep here (local) or submit it (slurm); done stages are skipped."""
    if cluster == "slurm":
        return _submit_to_slurm(cfg)
    from ctsl_hpc import pipeline
    from ctsl_hpc.launch.executors import LocalExecutor
    from ctsl_hpc.launch.slurm import submit_sweep

    ws = pipeline.Workspace.open(cfg)
    started = time.time()
    ws.data.check()  # bad corpus, audio or noise fails here, before any training
    submit_sweep(ws.root, cfg, LocalExecutor(ws.root, cfg))
    report_dir = ws.report_dir
    print((report_dir / "table1.md").read_text())
    print(f"work directory: {ws.root}")
    print(f"report: {report_dir} ({time.time() - started:.0f} s)")
    return 0


def _submit_to_slurm(cfg) -> int:
    """Submit (or continue) the sweep on Slurm and return at once."""
    from ctsl_hpc.config import SLURM_STAGES
    from ctsl_hpc.launch import slurm

    slurm.require_slurm()
    slurm.check_partitions(cfg, SLURM_STAGES)
    from ctsl_hpc.launch.executors import SlurmExecutor
    from ctsl_hpc.workdir import open_workdir

    root = open_workdir(cfg)
    plan = slurm.submit_sweep(root, cfg, SlurmExecutor(root, cfg))
    records = {r.key: r for r in slurm.Registry(root).all()}
    for stage in plan:
        submitted = [f"{t.variant or t.key}={records[t.key].job_id}" for t in stage.submit]
        print(f"{stage.stage}: submitted {', '.join(submitted) or '-'}"
              + (f"; done {[t.variant or t.key for t in stage.done]}" if stage.done else "")
              + (f"; still queued {sorted(stage.running.values())}" if stage.running else ""))
    print(f"work directory: {root}")
    print(f"follow with: python -m ctsl_hpc.launch status --workdir {root}")
    return 0


def _workdir_config(workdir: str):
    """The configuration saved in a work directory (without importing the pipeline)."""
    import yaml

    from ctsl_hpc.config import config_from_dict

    path = Path(workdir).resolve() / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: --workdir must be a sweep's work directory")
    return path.parent, config_from_dict(yaml.safe_load(path.read_text()))


def cmd_status(args: argparse.Namespace) -> int:
    from ctsl_hpc.launch import slurm

    workdir, cfg = _workdir_config(args.workdir)
    print(slurm.format_status(slurm.status_rows(workdir, cfg)))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from ctsl_hpc.launch import slurm

    workdir, _ = _workdir_config(args.workdir)
    records = slurm.resolve_keys(workdir, args.stage)
    paths = [p for r in records for p in slurm.log_paths(r)]
    if not paths:
        raise slurm.SlurmError(f"{args.stage}: no log files recorded (local runs log to the terminal)")
    offsets = dict.fromkeys(paths, 0)
    while True:
        for path in paths:
            if path.is_file():
                with open(path, "rb") as handle:
                    handle.seek(offsets[path])
                    chunk = handle.read()
                    offsets[path] += len(chunk)
                if chunk:
                    print(f"==> {path} <==" if len(paths) > 1 else "", end="\n" if len(paths) > 1 else "")
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
        if not args.follow:
            return 0
        states = slurm.job_states([r.job_id for r in records if r.job_id])
        if all(states.get(r.job_id) not in slurm.ACTIVE for r in records if r.job_id):
            return 0
        time.sleep(args.interval)


def cmd_cancel(args: argparse.Namespace) -> int:
    from ctsl_hpc.launch import slurm

    slurm.require_slurm()
    workdir, _ = _workdir_config(args.workdir)
    ids = slurm.cancel(workdir, args.stage)
    print(f"cancelled {', '.join(ids)}" if ids else "nothing queued or running")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    workdir, cfg = _workdir_config(args.workdir)
    cfg.workdir = str(workdir)
    return _sweep(cfg, args.cluster)


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
    left = replay_spool(ws.root, ws.cfg.tracking.uri)
    if left:
        print(f"{left} spooled record(s) could not be sent yet (is the tracking server up?)", file=sys.stderr)
        return 1
    print("every spooled record has reached the tracking store")
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
    sweep.add_argument("--tune", action="store_true",
                       help="Ray Tune search (configs/sweep.yaml: tune.*), then the best setting's students and report")
    sweep.add_argument("--cluster", choices=["local", "slurm"], default="local",
                       help="local: run here (default); slurm: submit teacher -> students -> eval and return")
    sweep.add_argument("--dry-run", action="store_true", help="print the jobs and resources; submit nothing")
    sweep.set_defaults(func=cmd_sweep)

    status = commands.add_parser("status", help="the sweep's jobs: state, elapsed, requeues, epoch, dev CCC, GPU-h")
    status.add_argument("--workdir", required=True)
    status.set_defaults(func=cmd_status)

    logs = commands.add_parser("logs", help="print a stage's job logs (teacher, students, eval, RM+TL, ...)")
    logs.add_argument("--workdir", required=True)
    logs.add_argument("stage", help="teacher, students, eval, a variant (RM+TL) or a key (student/RM+TL)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job(s) finish")
    logs.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    logs.set_defaults(func=cmd_logs)

    cancel = commands.add_parser("cancel", help="scancel the sweep's queued and running jobs")
    cancel.add_argument("--workdir", required=True)
    cancel.add_argument("stage", nargs="?", help="only this stage, variant or key (default: all)")
    cancel.set_defaults(func=cmd_cancel)

    resume = commands.add_parser("resume", help="resubmit what failed or never finished; skip what is done")
    resume.add_argument("--workdir", required=True)
    resume.add_argument("--cluster", choices=["local", "slurm"], default="slurm")
    resume.set_defaults(func=cmd_resume)

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
    except Exception as exc:
        from ctsl_hpc.launch.slurm import SlurmError

        if isinstance(exc, SlurmError):
            print(f"slurm error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, _input_errors()):
            print(f"input error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
