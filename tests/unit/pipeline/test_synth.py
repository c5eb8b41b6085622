"""The demo-data synthesizer: deterministic files, honest labels, held-out singers, and voices
whose pitch says what their label says (checked on the isolated voices, not trusted)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.synth import (
    LABELS,
    STYLES,
    generate_dataset,
    make_backing,
    make_singer,
    make_snippet,
    render_snippet,
)

SR = 44_100


def frame_f0(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """Per-frame F0 in Hz by autocorrelation (46 ms frames, 70-500 Hz), NaN where unvoiced."""
    frame, hop = 2048, 1024
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), frame)[::hop]
    frames = frames * np.hanning(frame)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame, axis=1)) ** 2, axis=1)[:, :frame]
    lo, hi = sr // 500, sr // 70
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    strength = ac[np.arange(len(ac)), lag] / np.maximum(ac[:, 0], 1e-20)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    voiced = (rms > 0.2 * np.median(rms[rms > 0])) & (strength > 0.3)
    return np.where(voiced, sr / lag, np.nan)


def median_f0(x: np.ndarray) -> float:
    return float(np.nanmedian(frame_f0(x)))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, n_per_class=4, seed=11, test_fraction=0.5)
    return out


# ---- files, labels, splits -----------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_dataset(tmp_path / name, n_per_class=2, seed=seed, test_fraction=0.5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 2 * 4 + 2  # 8 snippets and two CSVs
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    audio = [rel for rel in files if rel.suffix == ".wav"]
    assert all(
        (tmp_path / "a" / r).read_bytes() != (tmp_path / "c" / r).read_bytes() for r in audio
    )


def test_flac_is_deterministic_too(tmp_path: Path) -> None:
    for name in ("a", "b"):
        generate_dataset(tmp_path / name, n_per_class=1, seed=2, test_fraction=0.0, fmt="flac")
    files = sorted((tmp_path / "a").rglob("*.flac"))
    assert len(files) == 4
    assert not (tmp_path / "a" / "test").exists()  # an empty split is not written
    for f in files:
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
        assert sf.info(str(f)).format == "FLAC"


def test_csv_matches_the_files_on_disk(dataset: Path) -> None:
    for split in ("train", "test"):
        rows = read_csv(dataset / split / "labels.csv")
        assert list(rows[0]) == ["file", "label", "class_idx", "group"]
        assert [r["label"] for r in rows].count("male") == 2
        assert {r["label"] for r in rows} == set(LABELS)
        for r in rows:
            path = dataset / split / r["file"]
            assert path.is_file()
            assert path.parent.name == r["label"]
            assert int(r["class_idx"]) == LABELS.index(r["label"])
        on_disk = {str(p.relative_to(dataset / split)) for p in (dataset / split).rglob("*.wav")}
        assert on_disk == {r["file"] for r in rows}


def test_groups_name_the_singers_and_backings(dataset: Path) -> None:
    for r in read_csv(dataset / "train" / "labels.csv"):
        parts = r["group"].split("+")
        expected = {"none": ["bt"], "male": ["m"], "female": ["f"], "multi": None}[r["label"]]
        if expected is None:
            assert len(parts) == 2 and parts[0] != parts[1]
            assert all(p[0] in "mf" for p in parts)
        else:
            assert len(parts) == 1 and parts[0].startswith(expected[0])


def test_test_split_holds_out_singers_and_backings(dataset: Path) -> None:
    def ids(split: str) -> set[str]:
        rows = read_csv(dataset / split / "labels.csv")
        return {p for r in rows for p in r["group"].split("+")}

    train, test = ids("train"), ids("test")
    assert train and test
    assert not train & test


def test_files_are_3s_stereo_16bit_unclipped_and_audible(dataset: Path) -> None:
    for path in sorted(dataset.rglob("*.wav")):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (
            SR,
            2,
            3 * SR,
            "PCM_16",
        )
        pcm, _ = sf.read(str(path), dtype="int16")
        peak = int(np.abs(pcm.astype(np.int32)).max())
        assert peak < 32767, path
        rms_db = 20 * np.log10(np.sqrt(np.mean((pcm / 32768.0) ** 2)))
        assert -40 < rms_db < -10, path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"fmt": "mp3"}, "fmt"), ({"test_fraction": 1.0}, "test_fraction")],
)
def test_bad_dataset_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path, n_per_class=1, **kwargs)
    assert not any(tmp_path.iterdir())


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="label"):
        make_snippet("choir", np.random.default_rng(0))  # type: ignore[arg-type]


# ---- snippets in memory ----------------------------------------------------------------------


@pytest.mark.parametrize(("sr", "seconds"), [(44_100, 3.0), (48_000, 1.0), (16_000, 3.0)])
def test_snippet_shape_at_any_rate(sr: int, seconds: float) -> None:
    x = make_snippet("multi", np.random.default_rng(1), sr=sr, seconds=seconds)
    assert x.shape == (2, round(sr * seconds)) and x.dtype == np.float32
    assert np.isfinite(x).all() and 0.05 < np.abs(x).max() <= 0.89


def test_mix_is_the_sum_of_its_stems_and_the_same_without_them() -> None:
    s = render_snippet("female", np.random.default_rng(4))
    np.testing.assert_allclose(s.mix, s.vocals + s.accompaniment, atol=1e-5)
    assert np.array_equal(s.mix, make_snippet("female", np.random.default_rng(4)))
    assert not np.array_equal(s.mix, make_snippet("female", np.random.default_rng(5)))


@pytest.mark.parametrize("style", STYLES)
def test_every_backing_style_renders_without_voice(style: str) -> None:
    bt = dataclasses.replace(make_backing(np.random.default_rng(0), "bt-x"), style=style)
    s = render_snippet("none", np.random.default_rng(2), backings=[bt])
    assert s.backing.style == style and s.group == "bt-x"
    assert s.singers == () and s.voices == []
    assert not s.vocals.any()  # nothing sings in `none`
    assert np.sqrt(np.mean(s.accompaniment**2)) > 0.01


def test_male_voices_are_lower_than_female_voices() -> None:
    med = {
        label: [
            median_f0(render_snippet(label, np.random.default_rng(k)).voices[0]) for k in range(3)
        ]
        for label in ("male", "female")
    }
    assert all(80 < f < 190 for f in med["male"]), med
    assert all(170 < f < 400 for f in med["female"]), med
    assert max(med["male"]) < min(med["female"]), med


def test_multi_has_two_singers_at_distinct_pitches() -> None:
    rng = np.random.default_rng(0)
    pool = [make_singer(rng, g, f"{g[0]}{i}") for g in ("male", "female") for i in range(2)]
    pairs = set()
    for k in range(6):
        s = render_snippet("multi", np.random.default_rng(k), singers=pool)
        a, b = s.singers
        pairs.add(tuple(sorted((a.gender, b.gender))))
        assert a.id != b.id and s.group == "+".join(sorted((a.id, b.id)))
        assert len(s.voices) == 2 and all(np.sqrt(np.mean(v**2)) > 1e-3 for v in s.voices)
        fa, fb = frame_f0(s.voices[0]), frame_f0(s.voices[1])
        both = ~np.isnan(fa) & ~np.isnan(fb)
        assert both.sum() > 40  # they sing together most of the time
        gap = np.abs(12 * np.log2(fa[both] / fb[both]))
        assert np.median(gap) > 2.0, (k, np.median(gap))  # harmony or octaves, never unison
    assert len(pairs) >= 2, pairs  # same-gender duets occur too
