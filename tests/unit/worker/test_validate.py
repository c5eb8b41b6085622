"""worker/validate.py: only well-formed messages with a bounded front end reach the work."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.frontend import FrontendConfig
from worker.validate import InvalidMessage, check_frontend, check_infer, check_preprocess

SHA = "ab" * 32
MB = 1 << 20


def fe(**changes: Any) -> dict[str, Any]:
    return {**FrontendConfig().to_dict(), **changes}


def test_the_reference_and_other_real_front_ends_pass() -> None:
    assert check_frontend(fe()) == FrontendConfig().to_dict()
    assert check_frontend(fe(separation=False, n_mels=128, f_min=50)) is not None
    assert check_frontend(None) is None
    assert check_frontend(fe(spleeter_frames=0)) is not None  # Spleeter's segment by need
    check_preprocess(SHA, b"RIFF", "a.wav", fe())
    assert check_infer((SHA,), {"after": "task:0"}) == SHA
    assert check_infer([SHA], None) == SHA


@pytest.mark.parametrize(
    ("frontend", "reason"),
    [
        (fe(window_samples=10**12), "window_samples=1000000000000 outside"),
        (fe(n_fft=2**40), "n_fft=1099511627776 outside"),
        (fe(n_mels=100_000), "n_mels=100000 outside"),
        (fe(spleeter_frames=10**9), "spleeter_frames"),
        (fe(spleeter_frames=100), "spleeter_frames must be a multiple of 64 or 0"),
        (fe(n_frames=20_000, n_mels=512), "n_frames x n_mels"),
        (fe(hop_length=900), "hop_length <= frame_length <= n_fft"),
        (fe(f_max=9000.0), "f_min < f_max <= sample_rate / 2"),
        (fe(n_mels=True), "n_mels must be int"),
        (fe(n_mels=40.0), "n_mels must be int"),
        (fe(separation="yes"), "separation must be bool"),
        (fe(layout="mels_frames"), "layout must be one of"),
        (fe(evil=1), "unknown keys evil"),
        ({k: v for k, v in fe().items() if k != "n_mels"}, "missing keys n_mels"),
        ([1, 2], "a dict expected, got list"),
    ],
)
def test_a_front_end_out_of_bounds_is_refused(frontend: Any, reason: str) -> None:
    with pytest.raises(InvalidMessage, match="invalid front end") as err:
        check_frontend(frontend)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("x" * 64, b"", "a.wav", None), "sha256 must be 64 hex digits"),
        ((SHA.upper(), b"", "a.wav", None), "sha256 must be 64 hex digits"),
        ((SHA, "text", "a.wav", None), "audio must be bytes"),
        ((SHA, b"", "n" * 5000, None), "name must be a string"),
        ((SHA, b"", None, None), "name must be a string"),
    ],
)
def test_a_malformed_preprocess_message_is_refused(args: tuple, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        check_preprocess(*args)


def test_audio_within_the_message_cap_passes_and_over_it_is_refused() -> None:
    check_preprocess(SHA, bytes(MB), "a.wav", None, max_message_mb=1)
    with pytest.raises(InvalidMessage, match=r"1 MB of audio > 0.5 MB \(SCORER_MAX_MESSAGE_MB"):
        check_preprocess(SHA, bytes(MB), "a.wav", None, max_message_mb=0.5)


def test_a_path_is_taken_only_by_a_worker_that_shares_the_files() -> None:
    by_path = {"path": "/music/a.flac", "size": 40 * MB}
    check_preprocess(SHA, by_path, "a.flac", None, shared_input=True)
    with pytest.raises(InvalidMessage, match="SCORER_SHARED_INPUT is off here"):
        check_preprocess(SHA, by_path, "a.flac", None)


@pytest.mark.parametrize(
    ("audio", "reason"),
    [
        ({"path": "/a.flac"}, "exactly the keys path, size"),
        ({"path": "/a.flac", "size": 1, "x": 1}, "exactly the keys path, size"),
        ({"path": "a.flac", "size": 1}, "path must be absolute"),
        ({"path": "/a\0.flac", "size": 1}, "path must be absolute"),
        ({"path": "/" + "a" * 5000, "size": 1}, "path must be absolute"),
        ({"path": "/a.flac", "size": -1}, "size must be 0 to 2048 MB"),
        ({"path": "/a.flac", "size": True}, "size must be 0 to 2048 MB"),
        ({"path": "/a.flac", "size": 3000 * MB}, "size must be 0 to 2048 MB"),
        ([1], "audio must be bytes or {path, size}, got list"),
    ],
)
def test_a_malformed_path_message_is_refused(audio: Any, reason: str) -> None:
    with pytest.raises(InvalidMessage, match="invalid message") as err:
        check_preprocess(SHA, audio, "a.flac", None, shared_input=True)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ((), None, "exactly one argument"),
        ((SHA, SHA), None, "exactly one argument"),
        ((SHA,), {"after": "t", "more": 1}, "only the keyword 'after'"),
        ((SHA,), {"after": "t" * 300}, "delivery token"),
        ((12,), None, "sha256 must be 64 hex digits"),
    ],
)
def test_a_malformed_infer_message_is_refused(args: tuple, kwargs: Any, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        check_infer(args, kwargs)
