"""How a stage's job script starts Python: its checks, environment, setup lines and container.

The script first refuses to start when its submission folder, its pickle (what submitit unpickles:
code that runs as you) or the frozen code is writable by others than its owner, one line naming
it. Then ``slurm.env`` is exported, the user's setup lines run (``module load``, ``source
.../activate``), the frozen code goes first on ``PYTHONPATH`` and the submitting folder off it.
Values are the shell's to expand in the job: ``$USER`` in a container mount or a setup line, and
``${env:NAME}`` (:mod:`ctsl_hpc.masking`) as ``${NAME}``. A container runs the interpreter inside
it: Apptainer wraps the command (``--nv`` with GPUs, ``--bind`` per mount); pyxis takes
``--container-image`` as an srun option and the mounts through the environment variable Slurm
hands its options in (so that they are expanded in the job too); the environment, ``PYTHONPATH``
included, passes into both.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ctsl_hpc.config import SlurmStageConfig
from ctsl_hpc.masking import ENV_REFERENCE, shell_form

PYXIS_MOUNTS_VARIABLE = "SLURM_SPANK__SLURM_SPANK_OPTION_pyxis_container_mounts"  # srun reads pyxis's option here


def expandable(text: str) -> str:
    """``text`` in double quotes: one shell word in which ``$VAR`` and ``${VAR}`` expand when the job runs
    (``${env:NAME}`` becomes ``${NAME}``).

    Example:
        >>> expandable('/scratch/$USER:/data "x"')
        '"/scratch/$USER:/data \\\\"x\\\\""'
    """
    escaped = shell_form(text).replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    return f'"{escaped}"'


def ownership_check(submission_root: Path, code: Path | None) -> str:
    """A shell line that ends the job, naming the path, when the job's submission folder, its pickle or the
    frozen code can be written by someone other than its owner (a group member could make it run code)."""
    paths = [shlex.quote(str(submission_root)), f'{shlex.quote(str(submission_root))}/"$ctsl_job"',
             f'{shlex.quote(str(submission_root))}/"$ctsl_job/${{ctsl_job}}_submitted.pkl"']
    if code is not None:
        paths.append(shlex.quote(str(code)))
    return (
        'ctsl_job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}; ctsl_job=${ctsl_job:-$SLURM_JOB_ID}; '
        f"for ctsl_path in {' '.join(paths)}; do "
        'if [ -e "$ctsl_path" ] && [ -n "$(find "$ctsl_path" -maxdepth 0 -perm /022)" ]; then '
        'echo "ctsl_hpc: refusing to start: $ctsl_path is writable by others than its owner (a member of its group '
        'could run code as you): chmod go-w it, then run resume" >&2; exit 1; fi; done'
    )


def job_environment(
    stage: SlurmStageConfig, code: Path | None, submission_root: Path | None = None
) -> tuple[str | None, list[str], list[str]]:
    """How a stage's job script starts Python: (interpreter command, setup lines, srun options).

    ``code``: a :func:`ctsl_hpc.snapshot.snapshot` folder; ``submission_root``: the folder that holds the jobs'
    submission folders (its ownership is checked first)."""
    setup = [] if submission_root is None else [ownership_check(submission_root, code)]
    for name, value in stage.env.items():
        value = str(value)
        setup.append(f"export {name}={expandable(value) if ENV_REFERENCE.search(value) else shlex.quote(value)}")
    setup += [shell_form(line) for line in stage.setup]
    if code is not None:
        setup.append(f"export PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}")
        # The job starts in the folder sbatch ran in, and ``python -m`` puts that folder first on sys.path:
        # a checkout there would shadow the frozen code. PYTHONSAFEPATH (Python >= 3.11) keeps it off.
        setup.append("export PYTHONSAFEPATH=1")
    python, srun, container = stage.python, [], stage.container
    if container.runtime == "apptainer":
        gpus = ["--nv"] if stage.gpus_per_node else []
        words = ["apptainer", "exec", *gpus, *(expandable(f"--bind={m}") for m in container.mounts),
                 *map(shlex.quote, container.options), shlex.quote(container.image)]
        python = " ".join(words) + " " + (python or "python3")
    elif container.runtime == "pyxis":
        srun = [f"--container-image={container.image}", *container.options]
        if container.mounts:
            setup.append(f"export {PYXIS_MOUNTS_VARIABLE}={expandable(','.join(container.mounts))}")
        python = python or "python3"
    return python, setup, srun
