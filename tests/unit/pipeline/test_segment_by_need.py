"""Spleeter's segment by need (T = 0): the shortest multiple of 64 frames covering the input, at
most the official 512; the same computation as that fixed T on the whole-file path and on the
long-file blocks path, on real MIR-1K audio; a front-end version of its own."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline import blocks, spleeter
from pipeline.decode import decode
from pipeline.frontend import FrontendConfig
from pipeline.preprocess import featurize, spleeter_input

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mir1k4"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def seps() -> dict[int, spleeter.Separator]:
    """By need, 192 and 512, all with the official weights."""
    return {t: spleeter.load_separator("cpu", t) for t in (0, 192, 512)}


def real(clips: int, offset: int = 0) -> np.ndarray:
    """(n, 2) float32 at 16 kHz: MIR-1K snippets end to end, other snippets on each channel."""
    files = sorted((DATA / "audio").glob("*.mp3"))[offset : offset + 2 * clips]
    audio = [sf.read(f, dtype="float32")[0] for f in files]
    return np.stack([np.concatenate(audio[:clips]), np.concatenate(audio[clips:])], axis=1)


def flac(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16_000, format="FLAC")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("frames", "total", "want"),
    [(0, 134, 192), (0, 1, 64), (0, 128, 128), (0, 129, 192), (0, 512, 512), (0, 513, 512),
     (0, 100_000, 512), (256, 134, 256), (512, 134, 512)],
)  # fmt: skip
def test_segment_frames(frames: int, total: int, want: int) -> None:
    assert spleeter.segment_frames(frames, total) == want


def test_a_clip_runs_the_shortest_covering_segment(seps) -> None:
    x = torch.from_numpy(spleeter_input(decode(flac(real(1)))))[None]  # 3 s: 134 frames
    assert spleeter.n_frames(x.shape[-1]) == 134
    need = seps[0].separate(x)
    assert need.shape == x.shape
    assert torch.equal(need, seps[192].separate(x))  # T = 192, bit for bit
    assert not torch.equal(need, seps[512].separate(x))  # not the official output


def test_a_long_input_keeps_512(seps) -> None:
    x = torch.from_numpy(spleeter_input(decode(flac(real(5, offset=10)))))[None]  # 15 s
    assert spleeter.n_frames(x.shape[-1]) > 512
    assert torch.equal(
        seps[0].separate(x, chunk_segments=1), seps[512].separate(x, chunk_segments=1)
    )


@pytest.mark.parametrize("clips", [1, 5])
def test_blocks_by_need_equal_the_whole_file(seps, clips: int) -> None:
    """3 s (all in `finish`, T = 192) and 15 s (chunks of 512 while streaming, the rest at the
    end) through the streaming separator: the whole-file path's vocals, to the bit."""
    x = spleeter_input(decode(flac(real(clips, offset=20))))
    whole = seps[0].separate(torch.from_numpy(x)[None], chunk_segments=1)[0].numpy()
    stream = blocks.StreamingSeparator(seps[0], chunk_segments=1)
    parts = [stream.feed(x[:, at : at + 100_000]) for at in range(0, x.shape[1], 100_000)]
    parts.append(stream.finish())
    assert np.array_equal(np.concatenate(parts, axis=1), whole)


def test_featurize_blocks_by_need_equals_featurize(tmp_path: Path, seps) -> None:
    path = tmp_path / "clip.flac"
    path.write_bytes(flac(real(1, offset=30)))
    cfg = FrontendConfig(spleeter_frames=0)
    whole = featurize([decode(path.read_bytes())], cfg, seps[0])[0]
    got = blocks.featurize_blocks(path, cfg, seps[0], read_frames=10_007)
    assert np.array_equal(got.windows, whole)
    assert not np.array_equal(whole, featurize([decode(path.read_bytes())], cfg, seps[512])[0])


def test_by_need_is_a_front_end_version_of_its_own() -> None:
    versions = {FrontendConfig(spleeter_frames=t).version for t in (0, 192, 256, 512)}
    assert len(versions) == 4  # cached features are recomputed, never mixed
    assert FrontendConfig().version == FrontendConfig(spleeter_frames=512).version
