"""Self-supervised pre-training: its corpus never holds the demo's speech, noise sources or voices; the loop
learns, is reproducible and exports an encoder that ``model.backbone`` loads with its feature encoder frozen."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from ctsl_hpc.config import load_config
from ctsl_hpc.data.audio import read_audio
from ctsl_hpc.data.demo_sources import collect_noise_sources
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.data.pretrain_corpus import (
    PRETRAIN_VOICES,
    build_pretrain_corpus,
    licence_sentences,
    real_speech_sources,
    used_noise_sources,
)
from ctsl_hpc.data.synthetic import SENTENCES, VOICES
from ctsl_hpc.launch.__main__ import build_parser, cmd_pretrain
from ctsl_hpc.model import build_model
from ctsl_hpc.train.pretrain import PretrainSettings, export_backbone, pretrain

SMALL = ["model.tiny.hidden_size=16", "model.tiny.intermediate_size=32", "model.tiny.conv_dim=16", "model.tiny.heads=2",
         "model.tiny.num_layers=1", "model.num_layers=1"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # float comparisons, and the 2-core CI machine


def _noise_dirs(corpus) -> list[Path]:
    return [corpus.noise_train, corpus.noise_dev, corpus.noise_test]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_real_speech_excludes_every_file_a_demo_noise_pool_uses_or_could_use(small_corpus):
    kept = {s.path for s in real_speech_sources(_noise_dirs(small_corpus))}
    used = used_noise_sources(_noise_dirs(small_corpus))
    candidates = collect_noise_sources()
    assert used and len(kept) > 500
    assert kept.isdisjoint(used)
    for split in ("dev", "test"):  # no demo seed's development or test babble can hold one
        assert kept.isdisjoint({s.path for kind in candidates[split].values() for s in kind})
    talkers = {s.path for kind in ("talkers_en", "talkers_cs") for s in candidates["train"][kind]}
    assert kept == talkers - used


def test_tts_uses_other_voices_and_texts_than_the_demo():
    sentences = licence_sentences()
    assert len(sentences) >= 50 and len(set(sentences)) == len(sentences)
    assert not {s.lower() for s in sentences} & {s.lower() for s in SENTENCES}
    assert not set(PRETRAIN_VOICES) & set(VOICES)


@pytest.fixture(scope="module")
def corpus(small_corpus, tmp_path_factory):
    return build_pretrain_corpus(tmp_path_factory.mktemp("pretrain"), _noise_dirs(small_corpus), tts_utterances=3,
                                 noise_minutes=0.2, seed=5)  # fmt: skip


@pytest.mark.slow
def test_the_corpus_lists_its_sources_and_its_noise_avoids_the_demo_test_noise(corpus, small_corpus):
    folder = corpus.noise.parent
    rows = _rows(folder / "speech" / "SOURCES.csv")
    assert [r["file"] for r in rows] == [p.relative_to(folder / "speech").as_posix() for p in corpus.speech]
    assert corpus.summary["recorded_files"] == sum(r["kind"] == "recorded" for r in rows) > 500
    assert {r["package_or_voice"] for r in rows if r["kind"] == "tts"} <= set(PRETRAIN_VOICES)
    noise_sources = {r["source"] for r in _rows(corpus.noise / "SOURCES.csv")}
    demo_test = {s.path for kind in collect_noise_sources()["test"].values() for s in kind}
    assert noise_sources and noise_sources.isdisjoint(demo_test | used_noise_sources([small_corpus.noise_test]))
    again = build_pretrain_corpus(folder, _noise_dirs(small_corpus), tts_utterances=3, noise_minutes=0.2, seed=5)
    assert again == corpus  # a complete build is reused


def _pretrain(corpus, seed: int, steps: int = 4):
    waves = [read_audio(p, 16000, max_seconds=2.0) for p in corpus.speech[::40]]
    pool = NoisePool.from_directory(corpus.noise, 16000)
    settings = PretrainSettings(steps=steps, batch_size=3, crop_seconds=1.0, mask_length=4, num_negatives=10,
                                codevectors_per_group=8, seed=seed, log_every=2)  # fmt: skip
    return pretrain(waves, pool, load_config(None, SMALL).model, settings)


@pytest.mark.slow
def test_pretraining_is_reproducible_and_exports_an_encoder_that_model_backbone_loads_frozen(corpus, tmp_path):
    model, result = _pretrain(corpus, seed=11)
    again, _ = _pretrain(corpus, seed=11)
    other, _ = _pretrain(corpus, seed=12)
    assert [h["step"] for h in result.history] == [2, 4]
    assert all(np.isfinite(list(h.values())).all() and h["loss"] > 0 for h in result.history)
    assert set(result.held_out) == {"before", "after"}
    state, same, different = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert any(not torch.equal(state[k], different[k]) for k in state)

    out = export_backbone(model, tmp_path / "backbone", {"seed": 11})
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "PROVENANCE.json"}
    cfg = load_config(None, [*SMALL, f"model.backbone={out}", "model.freeze_feature_encoder=true"]).model
    emotion = build_model(cfg)
    encoder = model.wav2vec2.state_dict()
    for name, tensor in emotion.backbone.state_dict().items():
        assert torch.equal(tensor, encoder[name]), name
    assert not any(p.requires_grad for p in emotion.backbone.feature_extractor.parameters())
    assert all(p.requires_grad for p in emotion.backbone.encoder.parameters())


def test_the_pretrain_command_is_part_of_the_one_cli():
    args = build_parser().parse_args(["pretrain", "--out", "x", "--steps", "7", "--seed", "3"])
    assert args.func is cmd_pretrain and (args.out, args.steps, args.seed, args.batch_size) == ("x", 7, 3, None)


def test_the_shipped_tiny_ssl_backbone_passes_the_input_check_offline_and_loads_its_weights(monkeypatch):
    """``model.backbone=tiny-ssl`` names the package's own folder: the offline input check accepts it
    (no hub, no cache) and the model holds the shipped safetensors' encoder weights, feature encoder frozen."""
    import json
    from importlib import resources

    import safetensors.torch
    from huggingface_hub import constants

    from ctsl_hpc.model import check_backbone, is_shipped_backbone

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_backbone("tiny-ssl")
    assert is_shipped_backbone("tiny-ssl") and not is_shipped_backbone("tiny-ssl/..") and not is_shipped_backbone("x")
    shipped = resources.files("ctsl_hpc.backbones") / "tiny-ssl"
    provenance = json.loads((shipped / "PROVENANCE.json").read_text())
    assert provenance["command"].startswith("python -m ctsl_hpc.launch pretrain") and provenance["settings"]["seed"] == 0
    with resources.as_file(shipped / "model.safetensors") as weights:
        saved = safetensors.torch.load_file(weights)
    cfg = load_config(None, ["model.backbone=tiny-ssl", "model.freeze_feature_encoder=true"]).model
    emotion = build_model(cfg)
    loaded = emotion.backbone.state_dict()
    assert loaded.keys() <= saved.keys() and all(torch.equal(tensor, saved[name]) for name, tensor in loaded.items())
    assert not any(p.requires_grad for p in emotion.backbone.feature_extractor.parameters())
