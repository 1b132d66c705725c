"""Corpus loaders: CSV manifests and MSP-Podcast layouts written into tmp_path."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ctsl_hpc.config import ConfigError, load_config
from ctsl_hpc.data.corpora import Corpus, CorpusSpec, corpus_names, corpus_spec, register
from ctsl_hpc.data.corpus import ATTRIBUTES, CorpusError, Utterance, load_csv_manifest, load_msp_podcast

MSP_HEADER = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _labels(rng: np.random.Generator) -> list[float]:
    return [round(float(x), 3) for x in rng.uniform(1, 7, size=3)]


@pytest.fixture
def manifest_corpus(tmp_path: Path, rng: np.random.Generator, speech, write_wav):
    """A manifest with relative and absolute paths, with and without speakers; returns (path, expected rows)."""
    rows, expected = [], []
    for i, split in enumerate(["train"] * 5 + ["dev"] * 2 + ["test"] * 2):
        wav = write_wav(tmp_path / "clips" / f"u{i}.wav", speech(0.6))
        labels = _labels(rng)
        path = str(wav) if i % 2 else f"clips/u{i}.wav"
        speaker = f"spk{i % 3}" if i % 4 else ""
        rows.append([path, *labels, split, speaker])
        expected.append(Utterance(wav, tuple(labels), split, speaker or None))
    manifest = _write_csv(tmp_path / "manifest.csv", ["path", *ATTRIBUTES, "split", "speaker"], rows)
    return manifest, expected


def test_csv_manifest_resolves_relative_paths_and_groups_splits(manifest_corpus, monkeypatch, tmp_path):
    manifest, expected = manifest_corpus
    monkeypatch.chdir(tmp_path.parent)  # relative paths must resolve against the manifest, not the cwd
    corpus = load_csv_manifest(manifest)
    got = corpus["train"] + corpus["dev"] + corpus["test"]
    assert [len(corpus[s]) for s in ("train", "dev", "test")] == [5, 2, 2]
    assert [(u.path.resolve(), u.labels, u.split, u.speaker) for u in got] == [
        (e.path.resolve(), e.labels, e.split, e.speaker) for e in expected
    ]


def test_csv_manifest_without_speaker_column(tmp_path, rng, speech, write_wav):
    write_wav(tmp_path / "a.wav", speech(0.6))
    manifest = _write_csv(
        tmp_path / "m.csv", ["path", "valence", "arousal", "dominance", "split"],
        [["a.wav", 2, 3, 4, "train"], ["a.wav", 2, 3, 4, "dev"], ["a.wav", 2, 3, 4, "test"]],
    )
    (utt,) = load_csv_manifest(manifest)["train"]
    assert utt.labels == (3.0, 4.0, 2.0)  # (arousal, dominance, valence) whatever the column order
    assert utt.speaker is None
    assert utt.scaled_labels() == pytest.approx(((3 - 1) / 6, (4 - 1) / 6, (2 - 1) / 6))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("arousal", "nan", "field 'arousal' is missing or NaN"),
        ("dominance", "", "field 'dominance' is missing or NaN"),
        ("valence", "7.5", "field 'valence' = 7.5 is outside 1..7"),
        ("arousal", "0.2", "field 'arousal' = 0.2 is outside 1..7"),
        ("valence", "high", "field 'valence' is not a number"),
        ("split", "validation", "field 'split' = 'validation'"),
        ("path", "missing.wav", r"1 of 2 listed audio file\(s\) not found: .*missing.wav \(line 3\)"),
    ],
)
def test_csv_manifest_bad_row_names_file_line_and_field(tmp_path, speech, write_wav, field, value, message):
    write_wav(tmp_path / "a.wav", speech(0.6))
    row = {"path": "a.wav", "arousal": "3", "dominance": "4", "valence": "5", "split": "train"}
    good = list(row.values())
    row[field] = value
    manifest = _write_csv(tmp_path / "m.csv", list(row), [good, list(row.values())])
    with pytest.raises(CorpusError, match=message) as info:
        load_csv_manifest(manifest)
    assert f"{manifest} line 3" in str(info.value) or f"{manifest}: 1 of 2" in str(info.value)


def test_csv_manifest_missing_column_and_missing_file_and_no_train_rows(tmp_path, speech, write_wav):
    with pytest.raises(CorpusError, match="nope.csv: file not found"):
        load_csv_manifest(tmp_path / "nope.csv")
    broken = _write_csv(tmp_path / "m.csv", ["path", "arousal", "valence", "split"], [["a.wav", 1, 1, "train"]])
    with pytest.raises(CorpusError, match=r"m\.csv: missing column\(s\) dominance"):
        load_csv_manifest(broken)
    write_wav(tmp_path / "a.wav", speech(0.6))
    no_train = _write_csv(tmp_path / "t.csv", ["path", *ATTRIBUTES, "split"], [["a.wav", 1, 2, 3, "test"]])
    with pytest.raises(CorpusError, match=r"t\.csv: no train and no dev rows"):
        load_csv_manifest(no_train)


def _msp_root(tmp_path: Path, rng, speech, write_wav, label_name: str) -> tuple[Path, list[list[object]]]:
    root = tmp_path / "MSP"
    rows = []
    for i, split in enumerate(["Train"] * 4 + ["Development"] * 2 + ["Test1"] * 2 + ["Test2"] * 3):
        name = f"MSP-PODCAST_{i:04d}_0001.wav"
        write_wav(root / "Audios" / name, speech(0.6))
        act, val, dom = _labels(rng)
        rows.append([name, "N", act, val, dom, f"{100 + i % 3}", "Female", split])
    _write_csv(root / "Labels" / label_name, MSP_HEADER, rows)
    return root, rows


@pytest.mark.parametrize("label_name", ["labels_consensus.csv", "labels_concensus.csv"])
@pytest.mark.parametrize("test_split", ["Test1", "Test2"])
def test_msp_podcast_layout_maps_splits_and_attribute_order(tmp_path, rng, speech, write_wav, label_name, test_split):
    root, rows = _msp_root(tmp_path, rng, speech, write_wav, label_name)
    cfg = SimpleNamespace(data=SimpleNamespace(corpus="msp_podcast", root=str(root), msp_test_split=test_split))
    corpus = corpus_spec("msp_podcast").load(cfg, tmp_path / "unused").splits
    split_of = {"Train": "train", "Development": "dev", test_split: "test"}
    expected = [(root / "Audios" / r[0], (r[2], r[4], r[3]), split_of[r[7]], r[5]) for r in rows if r[7] in split_of]
    got = [(u.path, u.labels, u.split, u.speaker) for s in ("train", "dev", "test") for u in corpus[s]]
    assert got == expected
    assert len(corpus["test"]) == (2 if test_split == "Test1" else 3)


def test_msp_podcast_errors_name_file_line_and_field(tmp_path, rng, speech, write_wav):
    with pytest.raises(CorpusError, match="no label file"):
        load_msp_podcast(tmp_path)
    root, rows = _msp_root(tmp_path, rng, speech, write_wav, "labels_consensus.csv")
    label_file = root / "Labels" / "labels_consensus.csv"
    bad = [list(r) for r in rows]
    bad[1][4] = "nan"
    _write_csv(label_file, MSP_HEADER, bad)
    with pytest.raises(CorpusError, match=rf"{label_file} line 3: field 'EmoDom' is missing or NaN"):
        load_msp_podcast(root)
    bad = [list(r) for r in rows]
    bad[2][7] = "Test9"
    _write_csv(label_file, MSP_HEADER, bad)
    with pytest.raises(CorpusError, match=r"line 4: field 'Split_Set' = 'Test9'"):
        load_msp_podcast(root)
    (root / "Audios" / rows[0][0]).unlink()
    _write_csv(label_file, MSP_HEADER, rows)
    with pytest.raises(CorpusError, match=rf"1 of \d+ listed audio file\(s\) not found: .*{rows[0][0]} \(line 2\)"):
        load_msp_podcast(root)
    _write_csv(label_file, [c for c in MSP_HEADER if c != "EmoAct"], [r[:2] + r[3:] for r in rows])
    with pytest.raises(CorpusError, match="missing column.*EmoAct"):
        load_msp_podcast(root)


def test_the_config_takes_corpus_names_and_required_keys_from_the_registry(tmp_path):
    with pytest.raises(ConfigError, match=r"data.corpus: 'tsv' is not one of \['synthetic', 'msp_podcast', 'csv'\]"):
        load_config(None, ["data.corpus=tsv"])
    noise = [f"noise.{split}={tmp_path / split}" for split in ("train", "dev", "test")]
    with pytest.raises(ConfigError, match="data.root: is required when data.corpus is msp_podcast"):
        load_config(None, ["data.corpus=msp_podcast", *noise])
    with pytest.raises(ConfigError, match="data.manifest: is required when data.corpus is csv"):
        load_config(None, ["data.corpus=csv", *noise])
    with pytest.raises(ConfigError, match="noise.train: a noise folder is required"):
        load_config(None, ["data.corpus=csv", f"data.manifest={tmp_path / 'm.csv'}"])


def test_a_new_corpus_is_one_registration(tmp_path, small_corpus, rng):
    name = f"toy{rng.integers(10**6)}"
    register(CorpusSpec(name, lambda cfg, _dir: Corpus(load_csv_manifest(small_corpus.manifest)), own_noise=False))
    noise = [f"noise.{split}={tmp_path / split}" for split in ("train", "dev", "test")]
    cfg = load_config(None, [f"data.corpus={name}", *noise])
    assert name in corpus_names()
    splits = corpus_spec(cfg.data.corpus).load(cfg, tmp_path).splits
    assert splits == load_csv_manifest(small_corpus.manifest)
