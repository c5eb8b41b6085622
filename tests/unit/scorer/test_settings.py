"""Settings read from SCORER_* and the choices derived from them."""

import pytest

from scorer.settings import Settings


def test_bf16_defaults_decide_by_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SCORER_INFER_BF16", "SCORER_TRAIN_BF16"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.infer_amp is None  # auto: the Ensemble decides from the hardware
    assert s.train_amp is None  # the same for training (docs/RESULTS.md)


@pytest.mark.parametrize(("value", "want"), [("on", True), ("off", False), ("auto", None)])
def test_bf16_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, want: bool | None
) -> None:
    monkeypatch.setenv("SCORER_INFER_BF16", value)
    monkeypatch.setenv("SCORER_TRAIN_BF16", value)
    s = Settings()
    assert s.infer_amp is want and s.train_amp is want


def test_bf16_rejects_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORER_TRAIN_BF16", "yes please")
    with pytest.raises(ValueError, match="train_bf16"):
        Settings()


def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROFILE", "SPLEETER_FRAMES", "INFER_BF16", "PREFER_STUDENT"):
        monkeypatch.delenv(f"SCORER_{name}", raising=False)


def test_the_reference_profile_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    s = Settings()
    assert (s.profile, s.spleeter_frames, s.prefer_student, s.infer_bf16) == (
        "reference",
        512,
        False,
        "auto",
    )
    assert s.segment_override is None  # a model's features keep the front end it trained on


def test_the_fast_profile_sets_its_values(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("SCORER_PROFILE", "fast")
    s = Settings()
    assert (s.spleeter_frames, s.prefer_student, s.infer_bf16) == (0, True, "auto")
    assert s.segment_override == 0


def test_explicit_settings_override_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("SCORER_PROFILE", "fast")
    monkeypatch.setenv("SCORER_SPLEETER_FRAMES", "256")
    monkeypatch.setenv("SCORER_INFER_BF16", "off")
    s = Settings(prefer_student=False)
    assert (s.spleeter_frames, s.infer_bf16, s.prefer_student) == (256, "off", False)
    assert s.segment_override == 256
    # a profile given as a keyword beats the environment's, the other settings still apply
    assert Settings(profile="reference").segment_override is None


def test_spleeter_frames_auto_and_multiples_of_64(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean(monkeypatch)
    monkeypatch.setenv("SCORER_SPLEETER_FRAMES", "auto")
    assert Settings().spleeter_frames == 0
    assert Settings(spleeter_frames=192).spleeter_frames == 192
    with pytest.raises(ValueError, match="multiple of 64"):
        Settings(spleeter_frames=100)
    with pytest.raises(ValueError, match="profile"):
        Settings(profile="fastest")
