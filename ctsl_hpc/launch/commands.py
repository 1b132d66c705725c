"""The commands of the CLI (:mod:`ctsl_hpc.launch.__main__` parses the command line and reports errors): each
``cmd_<name>(args)`` returns the exit status."""

from __future__ import annotations

import argparse
import os
import sys
import time

from ctsl_hpc.atomic_io import read_json
from ctsl_hpc.config import SWEEP_CONFIG, ConfigError, ExperimentConfig, load_config
from ctsl_hpc.launch.backends import make_backend
from ctsl_hpc.launch.graph import submit_sweep
from ctsl_hpc.launch.job_registry import Registry
from ctsl_hpc.masking import mask_text
from ctsl_hpc.preflight import check_inputs, stale_preparation
from ctsl_hpc.workdir import Workdir


def _load(args: argparse.Namespace) -> ExperimentConfig:
    cfg = load_config(args.config, args.overrides)
    if args.workdir:
        cfg.workdir = args.workdir
    return cfg


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.tune:  # the Ray Tune search over the CTSL loss weights and noise minutes, then its students' Table 1
        args.config = args.config or str(SWEEP_CONFIG)
    cfg = _load(args)
    backend = make_backend(args.cluster, Workdir(cfg.workdir), cfg)
    if args.dry_run:
        from ctsl_hpc.launch.manage import dry_run_lines

        backend.check_config()
        check_inputs(cfg)  # what a sweep would find wrong before queueing, the dry run finds too
        print("\n".join(dry_run_lines(backend.workdir, cfg, backend, search=args.tune)))
        return 0
    return _sweep(cfg, args.cluster, search=args.tune)


def _sweep(cfg: ExperimentConfig, cluster: str, command: str = "sweep", search: bool = False) -> int:
    """Run the sweep (``search``: the Ray Tune search's graph) here (a blocking backend) or submit it; done stages
    are skipped."""
    os.umask(cfg.file_mask)
    backend = make_backend(cluster, Workdir(cfg.workdir), cfg)
    backend.check()  # missing tools or an unknown partition stop here, before the work directory exists
    check_inputs(cfg)  # so do missing or unreadable inputs: nothing is queued for them to fail on a GPU node
    started = time.time()
    if search and cfg.seeds:
        raise ConfigError("seeds: replicates run a plain sweep per seed; a search (--tune) takes one seed")
    with Workdir(cfg.workdir).lock(command):
        workdir = Workdir.open(cfg)
        workdir.record_sweep(search, cluster)
        workdir.open_replicates(cfg)
        stale = stale_preparation(cfg, workdir)
        if stale:  # the prepare stage runs again (it checks only what changed); the stages after it keep theirs
            print(f"{stale}: the prepare stage checks them again")
            for marker in (workdir.prepared, workdir.packed_done):
                marker.unlink(missing_ok=True)
        earlier = {r.code for r in Registry(workdir.root).all() if r.code}
        plan = submit_sweep(workdir, cfg, backend, search)
    if backend.blocking:
        report = Workdir(workdir.final).report if search else workdir.report
        if search:
            from ctsl_hpc.tune.summary import read_best_config

            best = read_best_config(workdir.root)
            print(f"best: {best['params']} ({best['metric']} {best['value']:.4f}) -> {workdir.best_config}")
        print(report.table1_md.read_text())
        if report.diagnostics_md.is_file():  # (replicates: each seed's own, in seed-<s>/report)
            print(report.diagnostics_md.read_text())
        print(f"corpus fingerprint: {read_json(workdir.prepared, 'run the sweep again')['fingerprint']}")
        print(f"work directory: {workdir.root}")
        print(f"report: {report.path} ({time.time() - started:.0f} s)")
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


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from ctsl_hpc.masking import mask

    print(yaml.safe_dump(mask(_load(args).to_dict()), sort_keys=False), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from ctsl_hpc.config import TUNE_STAGE
    from ctsl_hpc.launch.manage import format_status, format_trials, status_rows, trial_rows
    from ctsl_hpc.stage_jobs import SEARCH_KEY

    workdir = Workdir(args.workdir)
    cfg = workdir.read_config()
    rows = status_rows(workdir, cfg)
    search = workdir.sweep()["search"]
    trials = trial_rows(workdir, cfg, next((r.state for r in rows if r.stage == TUNE_STAGE), "NOT SUBMITTED")) \
        if search else []
    if args.json:
        print(json.dumps({"workdir": str(workdir.root), "jobs": [dataclasses.asdict(r) for r in rows],
                          **({"trials": [dataclasses.asdict(t) for t in trials]} if search else {})}, indent=1))
        return 0
    print(format_status(rows))
    if search:
        print(f"\nsearch ({SEARCH_KEY}): {len(trials)} of {cfg.tune.num_samples} trials started")
        if trials:
            print(format_trials(trials))
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
    started = workdir.sweep()  # a search goes on as a search, where it ran unless told otherwise
    cluster = args.cluster or started["backend"] or "slurm"
    return _sweep(cfg, cluster, "resume", search=started["search"])  # Workdir.open refuses experiment changes


def cmd_report(args: argparse.Namespace) -> int:
    from ctsl_hpc.evaluate.report import build_report
    from ctsl_hpc.launch.manage import describe_sweep

    workdir = Workdir(args.workdir)
    cfg = workdir.read_config()
    os.umask(cfg.file_mask)
    with workdir.lock("report"):
        folders = [workdir.replicate(seed).report.path for seed in cfg.seeds] or [workdir.report.path]
        for folder in folders:
            for path in build_report(folder, alpha=cfg.eval.alpha):
                print(path)
        if cfg.seeds:  # replicates: the combined Table 1 and the averaged Table 2 from the seeds' reports
            from ctsl_hpc.evaluate.replicates import write_combined

            seeds = {seed: workdir.replicate(seed).report.path for seed in cfg.seeds}
            for path in write_combined(seeds, workdir.report.path, cfg.eval.alpha):
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
    from ctsl_hpc.launch.ray_node import ray_node

    return ray_node(args.workdir, args.config, args.overrides)
