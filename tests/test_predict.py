"""`predict`: chunking of long recordings, batched masked inference, 1..7 outputs, files written, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ctsl_hpc.config import load_config
from ctsl_hpc.data.audio import WaveformStats, read_audio
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.model import build_model, load_model, save_model
from ctsl_hpc.predict import CSV_COLUMNS, PredictError, chunk_bounds, collect_inputs, predict_files, resolve_model_dir
from ctsl_hpc.workdir import RunDir

SR = 16000
SENTENCES = (
    "The storm rolled in over the harbour while the boats were still out at sea.",
    "I honestly cannot believe you finished the whole project in a single weekend.",
    "Please leave the keys on the kitchen table before you go to the station.",
    "Nobody told me the meeting had been moved to Thursday afternoon.",
)


pytestmark = pytest.mark.usefixtures("one_thread")  # float comparisons, and the 2-core CI machine


def _save_tiny(directory: Path, seed: int, bias: float, weight_scale: float) -> Path:
    """A tiny random model whose last layer is set so outputs sit around ``bias`` on the [0, 1] scale."""
    torch.manual_seed(seed)
    model = build_model(load_config(None, []).model)
    with torch.no_grad():
        model.head[-1].bias.fill_(bias)
        model.head[-1].weight.mul_(weight_scale)
    return save_model(model, directory, WaveformStats(mean=0.0005, std=0.06))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Outputs inside (0, 1), varying with the input: clipping does not hide any difference."""
    return _save_tiny(tmp_path_factory.mktemp("model"), seed=11, bias=0.5, weight_scale=0.5)


@pytest.fixture(scope="module")
def speech_bank(tmp_path_factory) -> np.ndarray:
    """A few espeak-ng sentences at 16 kHz, concatenated (real synthetic speech to cut from)."""
    folder = tmp_path_factory.mktemp("tts")
    waves = []
    for i, text in enumerate(SENTENCES):
        path = folder / f"s{i}.wav"
        voice = ["-s", str(140 + 20 * i), "-p", str(30 + 10 * i)]
        subprocess.run(["espeak-ng", *voice, "-w", str(path), text], check=True)
        waves.append(read_audio(path, SR))
    return np.concatenate(waves)


@pytest.fixture
def write_speech(speech_bank, rng, tmp_path):
    """write_speech(name, seconds, rate=16000) -> path of a wave cut from random points of the speech bank."""

    def write(name: str, seconds: float, rate: int = SR) -> Path:
        n = int(round(seconds * SR))
        pieces, total = [], 0
        while total < n:
            start = int(rng.integers(0, len(speech_bank) - SR))
            piece = speech_bank[start : start + int(rng.integers(SR, 3 * SR))]
            pieces.append(piece)
            total += len(piece)
        wave = np.concatenate(pieces)[:n]
        if rate != SR:
            from ctsl_hpc.data.audio import resample

            wave = resample(wave, SR, rate)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, rate, subtype="FLOAT" if path.suffix == ".wav" else None)
        return path

    return write


def _alone(model_dir: Path, path: Path, start_s: float, end_s: float) -> np.ndarray:
    """The model's 1..7 output for one chunk run on its own (batch of 1, no padding)."""
    model, stats, _ = load_model(model_dir)
    wave = stats.normalise(read_audio(path, SR))[int(round(start_s * SR)) : int(round(end_s * SR))]
    with torch.no_grad():
        pred = model(torch.from_numpy(wave)[None], torch.ones(1, len(wave), dtype=torch.bool)).pred[0].numpy()
    return np.clip(pred * 6 + 1, 1, 7)


# --------------------------------------------------------------------------- chunking


@pytest.mark.parametrize(
    ("seconds", "window", "hop", "expected"),
    [
        (35.0, 10, 5, [(0, 10), (5, 15), (10, 20), (15, 25), (20, 30), (25, 35)]),
        (37.0, 10, 5, [(0, 10), (5, 15), (10, 20), (15, 25), (20, 30), (25, 35), (30, 37)]),
        (31.5, 10, 10, [(0, 10), (10, 20), (20, 30), (30, 31.5)]),
        (30.6, 10, 10, [(0, 10), (10, 20), (20, 30.6)]),
        (7.0, 10, 5, [(0, 7)]),
        (0.5, 10, 5, [(0, 0.5)]),
    ],
)
def test_chunks_start_every_hop_and_a_short_tail_joins_the_previous_chunk(seconds, window, hop, expected):
    bounds = chunk_bounds(int(round(seconds * SR)), SR, window, hop, min_last_s=1.0)
    assert bounds == [(int(round(a * SR)), int(round(b * SR))) for a, b in expected]


def test_chunk_bounds_cover_every_sample_for_random_lengths(rng):
    for _ in range(200):
        window = float(rng.uniform(0.5, 12))
        hop = float(rng.uniform(0.1, 1.0)) * window
        n = int(rng.integers(1, 60 * SR))
        bounds = chunk_bounds(n, SR, window, hop, min_last_s=1.0)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert [s for s, _ in bounds] == [k * round(hop * SR) for k in range(len(bounds))]
        assert all(b[0] <= a[1] for a, b in zip(bounds, bounds[1:], strict=False))  # no gaps
        assert all(e - s <= round(window * SR) for s, e in bounds[:-1])
        assert bounds[-1][1] - bounds[-1][0] < round(window * SR) + SR


@pytest.mark.parametrize(("window", "hop"), [(0, 1), (10, 0), (5, 10), (-1, -1)])
def test_impossible_window_and_hop_are_refused(window, hop):
    with pytest.raises(ValueError, match="window|hop"):
        chunk_bounds(SR * 20, SR, window, hop)


# --------------------------------------------------------------------------- predictions


@pytest.fixture
def long_files(write_speech):
    """A 35 s recording, a 31.5 s one (1.5 s tail kept) and a 2.3 s one (shorter than a window)."""
    return [write_speech("long.wav", 35.0), write_speech("tail.wav", 31.5), write_speech("short.wav", 2.3)]


@pytest.fixture
def predicted(model_dir, long_files):
    return predict_files(model_dir, long_files, window_s=10.0, hop_s=5.0, batch_size=4)


def test_a_35_second_file_gives_six_overlapping_chunks(predicted, long_files):
    long, tail, short = predicted
    assert [r.path for r in predicted] == long_files
    assert [(c.start_s, c.end_s) for c in long.chunks] == [(s, s + 10.0) for s in (0, 5, 10, 15, 20, 25)]
    assert long.duration_s == pytest.approx(35.0)
    assert [(c.start_s, c.end_s) for c in tail.chunks][-2:] == [(20.0, 30.0), (25.0, 31.5)]
    assert [(c.start_s, c.end_s) for c in short.chunks] == [(0.0, 2.3)]


def test_file_mean_is_the_duration_weighted_mean_of_its_chunks(predicted):
    for result in predicted:
        durations = np.array([c.end_s - c.start_s for c in result.chunks])
        values = np.stack([c.values for c in result.chunks])
        np.testing.assert_allclose(result.mean, (values * durations[:, None]).sum(0) / durations.sum(), rtol=1e-12)
    tail = predicted[1]
    assert not np.allclose(tail.mean, np.stack([c.values for c in tail.chunks]).mean(0))  # weights matter here


def test_batched_padded_chunks_match_each_chunk_run_alone(predicted, model_dir):
    values = np.stack([c.values for r in predicted for c in r.chunks])
    assert np.all((values > 1) & (values < 7)), "outputs must be unclipped for this comparison to mean anything"
    assert values.std(axis=0).min() > 1e-4, "chunks must differ, or a mix-up would go unnoticed"
    for result in predicted:
        for chunk in result.chunks:
            alone = _alone(model_dir, result.path, chunk.start_s, chunk.end_s)
            np.testing.assert_allclose(chunk.values, alone, atol=2e-4, err_msg=f"{result.path} {chunk}")


def test_batch_size_does_not_change_predictions(model_dir, long_files, predicted):
    one = predict_files(model_dir, long_files, 10.0, 5.0, batch_size=1)
    many = predict_files(model_dir, long_files, 10.0, 5.0, batch_size=16)
    for a, b, c in zip(one, many, predicted, strict=True):
        chunks_a, chunks_b = (np.stack([x.values for x in r.chunks]) for r in (a, b))
        np.testing.assert_allclose(chunks_a, chunks_b, atol=2e-4)
        np.testing.assert_allclose(a.mean, c.mean, atol=2e-4)


@pytest.mark.parametrize(("bias", "bound"), [(3.0, 7.0), (-3.0, 1.0)])
def test_outputs_beyond_the_label_scale_are_clipped(tmp_path, write_speech, bias, bound):
    model_dir = _save_tiny(tmp_path / "m", seed=3, bias=bias, weight_scale=0.01)
    [result] = predict_files(model_dir, [write_speech("a.wav", 12.0)], 4.0, 2.0, 8)
    values = np.stack([c.values for c in result.chunks])
    assert np.all(values == bound) and np.all(result.mean == bound)


def test_resampled_stereo_input_is_read_as_16k_mono(model_dir, write_speech, tmp_path):
    mono = write_speech("mono.wav", 6.0, rate=22050)
    wave, rate = sf.read(mono, dtype="float32")
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([wave, wave], axis=1), rate, subtype="FLOAT")
    a, b = predict_files(model_dir, [mono, stereo], 10.0, 5.0, 2)
    assert a.duration_s == pytest.approx(6.0, abs=1e-3)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-5)


def test_a_stage_directory_resolves_to_its_best_model(model_dir, tmp_path):
    run = RunDir(tmp_path / "teacher")
    shutil.copytree(model_dir, run.epoch_dir(2))
    run.write_summary(2, {1: 0.05, 2: 0.1})
    assert resolve_model_dir(run.path) == run.epoch_dir(2)
    assert resolve_model_dir(model_dir) == model_dir
    with pytest.raises(PredictError, match="nowhere"):
        resolve_model_dir(tmp_path / "nowhere")


# --------------------------------------------------------------------------- inputs and bad files


def test_folders_are_searched_recursively_and_csv_paths_resolve_against_the_csv(write_speech, tmp_path):
    files = [write_speech("set/b.wav", 1.2), write_speech("set/a.wav", 1.1), write_speech("set/sub/c.flac", 1.3)]
    (tmp_path / "set" / "notes.txt").write_text("not audio")
    assert collect_inputs([tmp_path / "set"]) == sorted(files)
    listing = tmp_path / "set" / "list.csv"
    listing.write_text(f"path,comment\na.wav,x\nsub/c.flac,y\n{files[0]},z\n")
    assert collect_inputs([str(listing)]) == [files[1], files[2], files[0]]


def test_a_csv_without_path_column_is_named_in_the_error(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("file\na.wav\n")
    with pytest.raises(PredictError, match=f"{listing}.*'path' column"):
        collect_inputs([listing])


def test_missing_or_unreadable_file_stops_with_its_name(model_dir, write_speech, tmp_path, rng):
    good = write_speech("good.wav", 3.0)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(rng.bytes(5000))
    for bad in (tmp_path / "missing.wav", garbage):
        with pytest.raises(PredictError, match=str(bad)):
            predict_files(model_dir, [good, bad], 10.0, 5.0, 4)


def test_skip_bad_reports_bad_files_and_predicts_the_rest(model_dir, write_speech, tmp_path):
    good = write_speech("good.wav", 3.0)
    results = predict_files(model_dir, [tmp_path / "missing.wav", good], 10.0, 5.0, 4, skip_bad=True)
    assert "missing.wav" in results[0].error and not results[0].chunks
    assert results[1].error is None and len(results[1].chunks) == 1


# --------------------------------------------------------------------------- command line


def test_cli_prints_and_writes_csv_and_json(model_dir, long_files, tmp_path, capsys):
    out, js = tmp_path / "out" / "pred.csv", tmp_path / "pred.json"
    argv = ["predict", "--model", str(model_dir), *map(str, long_files), "--out", str(out), "--json", str(js)]
    assert main([*argv, "--window-s", "10", "--hop-s", "5", "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    assert "arousal" in printed and "mean" in printed and str(long_files[0]) in printed
    rows = list(csv.DictReader(out.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    expected = predict_files(model_dir, long_files, 10.0, 5.0, 8)
    assert len(rows) == sum(len(r.chunks) + 1 for r in expected)
    for result in expected:
        mine = [row for row in rows if row["file"] == str(result.path)]
        assert [row["chunk"] for row in mine] == [*map(str, range(len(result.chunks))), "mean"]
        got = np.array([[float(row[a]) for a in ("arousal", "dominance", "valence")] for row in mine])
        want = np.stack([*(c.values for c in result.chunks), result.mean])
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert [float(row["start_s"]) for row in mine[:-1]] == [c.start_s for c in result.chunks]
    data = json.loads(js.read_text())
    assert [d["file"] for d in data] == [str(p) for p in long_files]
    np.testing.assert_allclose([d["mean"]["valence"] for d in data], [r.mean[2] for r in expected], atol=1e-6)


def test_cli_names_a_bad_file_and_skip_bad_keeps_going(model_dir, write_speech, tmp_path, capsys):
    good, missing, out = write_speech("good.wav", 2.0), tmp_path / "nope.wav", tmp_path / "p.csv"
    argv = ["predict", "--model", str(model_dir), str(good), str(missing), "--out", str(out)]
    assert main(argv) == 1
    assert str(missing) in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--skip-bad"]) == 1
    assert str(missing) in capsys.readouterr().err
    assert {row["file"] for row in csv.DictReader(out.open())} == {str(good)}
