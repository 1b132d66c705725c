"""The command line: ``python -m ctsl_hpc.launch <command>`` (installed as ``ctsl``).

``sweep`` runs (or continues) an experiment: with no arguments, the embedded demo in this process;
``--cluster slurm`` submits it; ``--tune`` runs the Ray Tune search first. ``status``, ``logs``,
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
import sys
import time

from ctsl_hpc.atomic_io import RecordError, read_json
from ctsl_hpc.config import SWEEP_CONFIG, ConfigError, ExperimentConfig, load_config
from ctsl_hpc.launch.backends import backend_names, make_backend
from ctsl_hpc.launch.graph import submit_sweep
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.launch.manage import ManageError
from ctsl_hpc.launch.slurm_cli import SlurmError
from ctsl_hpc.locks import WorkdirLocked
from ctsl_hpc.logs import setup_logging
from ctsl_hpc.masking import mask_text
from ctsl_hpc.preflight import InputProblems, check_inputs, stale_preparation
from ctsl_hpc.track.tags import command_tags, exported_run_tags
from ctsl_hpc.workdir import ConfigMismatch, Workdir


def _input_errors() -> tuple[type[Exception], ...]:
    """Bad input the user can fix: reported as one line naming the file or field, no traceback.

    Imported lazily: the management commands must not pay for the data modules' imports."""
    from ctsl_hpc.data.audio import AudioError
    from ctsl_hpc.data.corpus import CorpusError
    from ctsl_hpc.data.noise import NoiseError

    return (CorpusError, AudioError, NoiseError, ConfigMismatch)


def _load(args: argparse.Namespace) -> ExperimentConfig:
    cfg = load_config(args.config, args.overrides)
    if args.workdir:
        cfg.workdir = args.workdir
    return cfg


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.tune:  # the Ray Tune search over the CTSL loss weights and noise minutes, then Table 1
        from ctsl_hpc.launch.ray_cluster import sweep_tune

        args.config = args.config or str(SWEEP_CONFIG)
        return sweep_tune(_load(args), args.cluster)
    cfg = _load(args)
    backend = make_backend(args.cluster, Workdir(cfg.workdir), cfg)
    if args.dry_run:
        from ctsl_hpc.launch.manage import dry_run_lines

        backend.check_config()
        check_inputs(cfg)  # what a sweep would find wrong before queueing, the dry run finds too
        print("\n".join(dry_run_lines(backend.workdir, cfg, backend)))
        return 0
    return _sweep(cfg, args.cluster)


def _sweep(cfg: ExperimentConfig, cluster: str, command: str = "sweep") -> int:
    """Run the sweep here (a blocking backend) or submit it; done stages are skipped."""
    os.umask(cfg.file_mask)
    backend = make_backend(cluster, Workdir(cfg.workdir), cfg)
    backend.check()  # missing tools or an unknown partition stop here, before the work directory exists
    check_inputs(cfg)  # so do missing or unreadable inputs: nothing is queued for them to fail on a GPU node
    started = time.time()
    with Workdir(cfg.workdir).lock(command):
        workdir = Workdir.open(cfg)
        stale = stale_preparation(cfg, workdir)
        if stale:  # the prepare stage runs again (it checks only what changed); the stages after it keep theirs
            print(f"{stale}: the prepare stage checks them again")
            for marker in (workdir.prepared, workdir.packed_done):
                marker.unlink(missing_ok=True)
        earlier = {r.code for r in Registry(workdir.root).all() if r.code}
        plan = submit_sweep(workdir, cfg, backend)
    if backend.blocking:
        print(workdir.report.table1_md.read_text())
        print(workdir.report.diagnostics_md.read_text())
        print(f"corpus fingerprint: {read_json(workdir.prepared, 'run the sweep again')['fingerprint']}")
        print(f"work directory: {workdir.root}")
        print(f"report: {workdir.report.path} ({time.time() - started:.0f} s)")
        _print_runs_page(cfg)
        return 0
    records = {r.key: r for r in Registry(workdir.root).all()}
    for stage in plan:
        submitted = [f"{t.name}={records[t.key].job_id}" for t in stage.submit]
        print(f"{stage.stage}: submitted {', '.join(submitted) or '-'}"
              + (f"; done {[t.name for t in stage.done]}" if stage.done else "")
              + (f"; still queued {sorted(stage.running.values())}" if stage.running else ""))
    submitted = {records[t.key].code for stage in plan for t in stage.submit} - {""}
    for code in sorted(submitted):
        print(f"code {code}: the submitted jobs import {workdir.code / code}, also after every requeue")
    if submitted and earlier and not submitted <= earlier:
        print(f"the package changed since the earlier submissions (code {', '.join(sorted(earlier))}): the jobs "
              f"submitted now run code {', '.join(sorted(submitted))}; finished stages keep their results")
    print(f"work directory: {workdir.root}")
    print(f"follow with: python -m ctsl_hpc.launch status --workdir {workdir.root}")
    return 0


def _print_runs_page(cfg: ExperimentConfig) -> None:
    """Where to review the sweep in MLflow (on a tracking server)."""
    if not cfg.tracking.enabled:
        return
    from ctsl_hpc.track.replay import resolve_uri
    from ctsl_hpc.track.server import training_runs_url

    url = training_runs_url(resolve_uri(cfg.workdir, cfg.tracking.uri), cfg.tracking.experiment or cfg.name)
    if url:
        print(f"review in MLflow: {mask_text(url)}")


def cmd_status(args: argparse.Namespace) -> int:
    from ctsl_hpc.launch.manage import format_status, status_rows

    workdir = Workdir(args.workdir)
    print(format_status(status_rows(workdir, workdir.read_config())))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from ctsl_hpc.launch.manage import print_logs

    workdir = Workdir(args.workdir)
    print_logs(workdir, workdir.read_config(), args.stage, args.follow, args.interval)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from ctsl_hpc.launch.manage import cancel

    workdir = Workdir(args.workdir)
    ids = cancel(workdir, workdir.read_config(), args.stage)
    print(f"cancelled {', '.join(ids)}" if ids else "nothing queued or running")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    workdir = Workdir(args.workdir)
    cfg = load_config(workdir.config_file, args.overrides) if args.overrides else workdir.read_config()
    cfg.workdir = str(workdir.root)
    return _sweep(cfg, args.cluster, "resume")  # Workdir.open refuses overrides that change the experiment


def cmd_report(args: argparse.Namespace) -> int:
    from ctsl_hpc.evaluate.report import build_report
    from ctsl_hpc.launch.manage import describe_sweep

    workdir = Workdir(args.workdir)
    cfg = workdir.read_config()
    os.umask(cfg.file_mask)
    with workdir.lock("report"):
        for path in build_report(workdir.report.path, alpha=cfg.eval.alpha):
            print(path)
        print(describe_sweep(workdir, cfg))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from ctsl_hpc.track.replay import replay_spool

    workdir = Workdir(args.workdir)
    cfg = workdir.read_config()
    os.umask(cfg.file_mask)
    with workdir.lock("sync"):
        left = replay_spool(workdir.root, cfg.tracking.uri)
    if left:
        print(f"{left} spooled record(s) could not be sent yet (is the tracking server up?)", file=sys.stderr)
        return 1
    print("every spooled record has reached the tracking store")
    return 0


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    from ctsl_hpc.track.server import ServerRefused, run_server

    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    tls = None if args.tls_cert is None else (args.tls_cert, args.tls_key)
    try:
        return run_server(args.backend_store_uri, args.artifacts_destination, args.host, args.port, args.auth_config,
                          args.no_auth, tls)
    except ServerRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_predict(args: argparse.Namespace) -> int:
    import tempfile

    from ctsl_hpc.predict import run_cli

    def predict(model: str) -> int:
        return run_cli(
            model, args.inputs, args.out, args.json, args.window_s, args.hop_s, args.batch_size, args.skip_bad
        )

    if not args.model.startswith("models:/"):
        return predict(args.model)
    from mlflow.exceptions import MlflowException

    from ctsl_hpc.track.registry import fetch_model

    with tempfile.TemporaryDirectory(prefix="ctsl-model-") as tmp:  # the registry's copy, for this call only
        try:
            model_dir = fetch_model(args.model, tmp, args.tracking_uri)
        except MlflowException as exc:
            print(f"error: {args.model}: {exc.message}", file=sys.stderr)
            return 1
        return predict(str(model_dir))


def cmd_standin_backbone(args: argparse.Namespace) -> int:
    from ctsl_hpc.config import LARGE_ROBUST
    from ctsl_hpc.model import write_standin_backbone

    path = write_standin_backbone(args.directory, args.seed)
    print(f"{path}: {LARGE_ROBUST}'s architecture (24 layers) with random weights; run with model.backbone={path}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ctsl_hpc.train.pretrain import PretrainSettings, pretrain_demo_backbone

    given = {"steps": args.steps, "batch_size": args.batch_size}
    settings = PretrainSettings(seed=args.seed, **{k: v for k, v in given.items() if v is not None})
    command = f"python -m ctsl_hpc.launch pretrain --out {args.out} --seed {settings.seed} --steps {settings.steps} " \
              f"--batch-size {settings.batch_size} --tts {args.tts} --noise-minutes {args.noise_minutes:g}"  # fmt: skip
    out = pretrain_demo_backbone(args.out, args.workdir, settings, args.tts, args.noise_minutes, command)
    print(f"backbone: {out} (model.backbone={out})")
    return 0


def cmd_ray_node(args: argparse.Namespace) -> int:
    from ctsl_hpc.launch.ray_cluster import tune_allocation

    return tune_allocation(args.workdir, args.config, args.overrides)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (default: configs/demo.yaml, the embedded demo)")
    parser.add_argument("--workdir", help="work directory (default: the config's workdir)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.epochs=3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctsl_hpc.launch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    visible = "sweep,status,logs,cancel,resume,report,sync,mlflow-server,predict,standin-backbone,pretrain"
    commands = parser.add_subparsers(dest="command", required=True, metavar=f"{{{visible}}}")
    clusters = backend_names()

    sweep = commands.add_parser("sweep", help="run or continue an experiment (default: the embedded demo)")
    _config_args(sweep)
    sweep.add_argument("--tune", action="store_true",
                       help="Ray Tune search (configs/sweep.yaml: tune.*), then the best setting's students and report")
    sweep.add_argument("--cluster", choices=clusters, default="local",
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

    cancel = commands.add_parser("cancel", help="cancel the sweep's queued and running jobs")
    cancel.add_argument("--workdir", required=True)
    cancel.add_argument("stage", nargs="?", help="only this stage, variant or key (default: all)")
    cancel.set_defaults(func=cmd_cancel)

    resume = commands.add_parser("resume", help="resubmit what failed or never finished; skip what is done")
    resume.add_argument("--workdir", required=True)
    resume.add_argument("--cluster", choices=clusters, default="slurm", help="where to run what is left (default: slurm)")
    resume.add_argument("overrides", nargs="*",
                        help="where and how it runs from now on, e.g. slurm.nodes=1 slurm.partition=long (runtime keys only)")
    resume.set_defaults(func=cmd_resume)

    report = commands.add_parser("report", help="rebuild Table 1, Table 2 and the plots from <workdir>/report")
    report.add_argument("--workdir", required=True)
    report.set_defaults(func=cmd_report)

    sync = commands.add_parser("sync", help="replay MLflow records spooled while the server was away")
    sync.add_argument("--workdir", required=True)
    sync.set_defaults(func=cmd_sync)

    server = commands.add_parser("mlflow-server", help="start an MLflow tracking server for a cluster")
    server.add_argument("--backend-store-uri", required=True, help="e.g. sqlite:////shared/mlflow.db or postgresql://...")
    server.add_argument("--artifacts-destination", required=True, help="a folder on shared storage")
    server.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--auth-config", help="an MLflow basic_auth.ini: every client must log in (see README)")
    server.add_argument("--no-auth", action="store_true",
                        help="listen beyond this machine without a login (only where the network is yours alone)")
    server.add_argument("--tls-cert", help="a PEM certificate: serve HTTPS (clients trust it: MLFLOW_TRACKING_SERVER_CERT_PATH)")
    server.add_argument("--tls-key", help="the certificate's PEM key")
    server.set_defaults(func=cmd_mlflow_server)

    predict = commands.add_parser("predict", help="arousal/dominance/valence (1..7) of audio files")
    predict.add_argument("--model", required=True, help="a saved model directory (or a finished training stage), "
                         "or a registered model: models:/<experiment>-<variant>@best (or .../<version>)")
    predict.add_argument("--tracking-uri", help="where models:/ URIs are looked up (default: $MLFLOW_TRACKING_URI)")
    predict.add_argument("inputs", nargs="+", help="audio files, folders (recursive) or CSVs with a path column")
    predict.add_argument("--out", default="predictions.csv", help="CSV output (default: predictions.csv)")
    predict.add_argument("--json", help="also write the predictions as JSON here")
    predict.add_argument("--window-s", type=float, default=10.0, help="chunk length in seconds (default 10)")
    predict.add_argument("--hop-s", type=float, default=5.0, help="chunk hop in seconds (default 5)")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--skip-bad", action="store_true", help="report unreadable files and go on")
    predict.set_defaults(func=cmd_predict)

    standin = commands.add_parser(
        "standin-backbone", help="write a randomly initialised facebook/wav2vec2-large-robust (no hub; ~1.3 GB)"
    )
    standin.add_argument("directory", help="the Hugging Face folder to write (config.json, model.safetensors)")
    standin.add_argument("--seed", type=int, default=0)
    standin.set_defaults(func=cmd_standin_backbone)
    pre = commands.add_parser("pretrain", help="pre-train the demo's tiny wav2vec2 (self-supervised, noisy speech)")
    pre.add_argument("--out", default="runs/pretrain/backbone", help="the backbone folder to write")
    pre.add_argument("--workdir", default="runs/pretrain", help="where the demo and pre-training corpora are built")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--steps", type=int, help="optimiser steps (default: PretrainSettings.steps)")
    pre.add_argument("--batch-size", type=int, help="crops per step (default: PretrainSettings.batch_size)")
    pre.add_argument("--tts", type=int, default=600, help="espeak-ng utterances (other voices and texts than the demo's)")
    pre.add_argument("--noise-minutes", type=float, default=10.0, help="noise clips mixed in (not the demo's test noise)")
    pre.set_defaults(func=cmd_pretrain)

    # hidden: one task per node of a Ray Tune allocation (launch/ray-on-slurm.sh, the submitted sweep --tune)
    node = commands.add_parser("ray-node")
    node.add_argument("--workdir", required=True, help="the sweep's work directory, on shared storage")
    node.add_argument("--config", help="experiment YAML (default: the config saved in --workdir)")
    node.add_argument("overrides", nargs="*", help="dotted overrides such as tune.num_samples=32")
    node.set_defaults(func=cmd_ray_node)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow configures its logger at import
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
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
    except Exception as exc:
        if isinstance(exc, _input_errors()):
            print(f"input error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
