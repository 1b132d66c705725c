"""The typed config: YAML + dotted overrides, validation naming the key."""

import re

import pytest

from ctsl_hpc.config import CONFIG_DIR, ConfigError, config_from_dict, load_config, parse_override


def test_demo_config_is_the_default_and_loads():
    cfg = load_config()
    assert cfg.data.corpus == "synthetic"
    assert cfg.model.backbone == "tiny-ssl" and cfg.model.freeze_feature_encoder  # self-supervised, as the paper starts


def test_paper_config_holds_the_papers_setup():
    cfg = load_config(CONFIG_DIR / "paper.yaml")
    assert cfg.model.backbone == "facebook/wav2vec2-large-robust"
    assert cfg.model.num_layers == 12 and cfg.model.freeze_feature_encoder
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.epochs) == (32, 1e-5, 20)
    assert (cfg.student.lambda_tl, cfg.student.lambda_cl, cfg.student.snr_db) == (100.0, 10.0, 0.0)


@pytest.mark.parametrize("name", ["paper.yaml", "slurm-gpu.yaml"])
def test_paper_configs_evaluate_and_batch_as_the_paper(name):
    cfg = load_config(CONFIG_DIR / name)
    assert (cfg.eval.groups, cfg.eval.n_groups, cfg.eval.top_k) == ("splits", 30, 3)  # 30 disjoint groups
    assert not cfg.train.bucket_by_length  # random batches


def test_every_cell_of_the_demos_table1_holds_at_least_6_values():
    cfg = load_config()
    # splits: every condition scores all groups, so a cell holds (checkpoints kept) x n_groups >= 1 x 6
    assert cfg.eval.groups == "splits" and cfg.eval.n_groups >= 6
    assert cfg.student.epochs >= 3  # epochs 1 and 3 are not consecutive: two students' checkpoints can be kept


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "data.manifest=/x.csv", "student.variants=[RM, RM+TL]", "train.lr=1e-4"])
    assert cfg.train.epochs == 3 and cfg.data.manifest == "/x.csv"
    assert cfg.student.variants == ["RM", "RM+TL"] and cfg.train.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epoch=3", "train.epoch"),
        ("trian.epochs=3", "trian"),
        ("train.epochs=three", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("train.lr=-1", "train.lr"),
        ("data.corpus=timit", "data.corpus"),
        ("student.variants=[RM, XL]", "student.variants[1]"),
        ("model.dropout=1.5", "model.dropout"),
        ("eval.alpha=2", "eval.alpha"),
        ("train.bucket_by_length=maybe", "train.bucket_by_length"),
        ("eval.noisy_roots={snr3: /x}", "eval.noisy_roots.snr3"),
    ],
)
def test_bad_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_a_real_corpus_needs_its_paths_and_noise_folders():
    with pytest.raises(ConfigError, match="data.manifest"):
        load_config(None, ["data.corpus=csv"])
    with pytest.raises(ConfigError, match="noise.train"):
        load_config(None, ["data.corpus=csv", "data.manifest=/m.csv"])


def test_override_syntax_errors_are_clear():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.epochs")


def test_round_trip_through_a_dict_keeps_the_digest():
    cfg = load_config(None, ["train.epochs=5"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.digest() == cfg.digest()
    assert load_config(None, ["train.epochs=6"]).digest() != cfg.digest()


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(("override", "says"), [
    ("umask=77", 'umask: 77 was read as a number'),  # 77 decimal is 0o115: folders without the owner's x bit
    ("umask=0o27", 'umask: must be an octal mask such as "027"'),
    ("tracking.uri=notauri", "tracking.uri: 'notauri' is neither a URI"),
])
def test_a_umask_or_tracking_uri_that_would_surprise_is_refused_with_the_fix(override, says):
    with pytest.raises(ConfigError) as refused:
        load_config(None, [override])
    assert str(refused.value).startswith(says) and "\n" not in str(refused.value)


def test_the_umask_is_octal_and_never_lets_others_write():
    assert load_config(None, ["umask=007"]).file_mask == 0o027  # the group reads, never writes
    assert load_config(None, ["umask=077"]).file_mask == 0o077
    assert load_config().file_mask == 0o027
    assert load_config(None, ["tracking.uri=./mlruns"]).tracking.uri == "./mlruns"


def test_a_work_directory_saved_with_an_integer_umask_still_loads():
    values = load_config().to_dict()
    values["umask"] = 0o007  # how configs were saved before the umask was a string
    assert config_from_dict(values).umask == "007"


def test_a_config_without_eval_or_train_sections_follows_the_papers_protocol(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\nworkdir: runs/mine\n")
    cfg = load_config(mine)
    assert cfg.eval.groups == "splits" and cfg.eval.n_groups == 30  # disjoint groups, as the paper
    assert not cfg.train.bucket_by_length  # random batches, as the paper
    assert cfg.model.layerdrop == 0.0


@pytest.mark.parametrize(("override", "says"), [
    ("model.layerdrop=1.5", "model.layerdrop: must be in [0, 1)"),
    ("seeds=[3]", "seeds: give two or more distinct seeds"),
    ("seeds=[1,1]", "seeds: give two or more distinct seeds"),
    ("eval.noisy_dev_roots={snr3: /x}", "eval.noisy_dev_roots.snr3: conditions are"),
])
def test_replicates_layerdrop_and_noisy_dev_sets_are_checked(override, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(None, [override])


def test_layerdrop_needs_the_plain_engine():
    assert load_config(None, ["model.layerdrop=0.1"]).model.layerdrop == 0.1
    with pytest.raises(ConfigError, match="model.layerdrop: needs train.engine plain"):
        load_config(None, ["model.layerdrop=0.1", "train.engine=ddp"])


def test_the_configuration_reference_is_generated_from_the_schema_and_up_to_date():
    from ctsl_hpc.config import reference
    from tests.helpers import REPO

    text = reference.markdown()
    assert (REPO / "docs" / "configuration.md").read_text() == text, (
        "docs/configuration.md is out of date: python -m ctsl_hpc.config.reference > docs/configuration.md")
    for key in ("data.stage_dir", "eval.noisy_dev_roots", "model.layerdrop", "seeds", "tune.scheduler",
                "slurm.<stage>.gpus_per_node"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
        assert row.split("|")[-2].strip(), f"{key} has no meaning in the schema"
    assert all(line.count("|") >= 4 and line.split("|")[-2].strip() for line in text.splitlines() if line.startswith("| `"))
