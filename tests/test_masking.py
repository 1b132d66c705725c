"""What looks secret is masked wherever a config or a command is shown; ``${env:NAME}`` is read in the job."""

from __future__ import annotations

import secrets

import pytest

from ctsl_hpc.masking import MASK, is_secret_name, mask, mask_text, resolve_env, shell_form


@pytest.mark.parametrize("name", ["password", "MLFLOW_TRACKING_PASSWORD", "passwd", "HF_TOKEN", "client_secret",
                                  "WANDB_API_KEY", "aws_credentials", "ssh.key"])
def test_names_that_say_secret(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["NCCL_IB_HCA", "partition", "uri", "OMP_NUM_THREADS"])
def test_names_that_do_not(name):
    assert not is_secret_name(name)


def test_a_config_loses_every_secret_and_keeps_the_rest():
    password, token = secrets.token_urlsafe(12), secrets.token_hex(8)
    config = {
        "tracking": {"uri": f"https://alice:{password}@mlflow.example.org:5443/", "experiment": "ctsl"},
        "slurm": {"env": {"HF_TOKEN": token, "NCCL_SOCKET_IFNAME": "ib0", "S3_KEY": "${env:S3_KEY}"},
                  "setup": [f"export WANDB_API_KEY={token}", "module load cuda/12.4", f"pip --index-url "
                            f"https://bob:{password}@pypi.example.org/simple install x"]},
        "seeds": [1, 2],
    }
    masked = mask(config)
    assert password not in repr(masked) and token not in repr(masked)
    assert masked["tracking"] == {"uri": f"https://{MASK}@mlflow.example.org:5443/", "experiment": "ctsl"}
    assert masked["slurm"]["env"] == {"HF_TOKEN": MASK, "NCCL_SOCKET_IFNAME": "ib0", "S3_KEY": "${env:S3_KEY}"}
    assert masked["slurm"]["setup"][:2] == [f"export WANDB_API_KEY={MASK}", "module load cuda/12.4"]
    assert masked["seeds"] == [1, 2] and config["slurm"]["env"]["HF_TOKEN"] == token  # a copy


def test_a_command_line_loses_its_secrets():
    token = secrets.token_hex(8)
    text = f"sweep tracking.uri=http://u:{token}@h:5000 'slurm.env={{HF_TOKEN: {token}}}' train.epochs=3"
    shown = mask_text(text)
    assert token not in shown and "train.epochs=3" in shown and "http://***@h:5000" in shown


def test_an_env_reference_is_read_where_it_is_used(monkeypatch):
    value = secrets.token_hex(6)
    monkeypatch.setenv("CTSL_TEST_SECRET", value)
    assert resolve_env("https://me:${env:CTSL_TEST_SECRET}@host", "tracking.uri") == f"https://me:{value}@host"
    assert shell_form("export T=${env:CTSL_TEST_SECRET}") == "export T=${CTSL_TEST_SECRET}"
    monkeypatch.delenv("CTSL_TEST_SECRET")
    with pytest.raises(KeyError, match=r"tracking\.uri: \$\{env:CTSL_TEST_SECRET\} names a variable"):
        resolve_env("${env:CTSL_TEST_SECRET}", "tracking.uri")
