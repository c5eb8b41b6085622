"""SCORER_SEPARATION_BF16: off by default, auto under the fast profile, an explicit value wins;
the front end it gives (bf16 U-Nets only where separating, and under auto only where bf16 is
native), and its way through a Celery message's front-end check."""

from __future__ import annotations

import pytest

from pipeline.frontend import FrontendConfig
from scorer.settings import Settings
from worker.runtime import frontend_from_settings, scoring_frontend, spleeter_bf16_wanted
from worker.validate import InvalidMessage, check_frontend


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SCORER_SEPARATION_BF16", "SCORER_PROFILE", "SCORER_SEPARATION"):
        monkeypatch.delenv(name, raising=False)


def test_off_by_default_auto_under_the_fast_profile() -> None:
    assert Settings().separation_bf16 == "off" and Settings().separation_amp is False
    fast = Settings(profile="fast")
    assert fast.separation_bf16 == "auto" and fast.separation_amp is None


def test_an_explicit_off_wins_over_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORER_PROFILE", "fast")
    monkeypatch.setenv("SCORER_SEPARATION_BF16", "off")
    assert Settings().separation_bf16 == "off"
    assert not frontend_from_settings(Settings(), native_bf16=True).spleeter_bf16


@pytest.mark.parametrize(
    ("setting", "native", "want"),
    [(None, True, True), (None, False, False), (True, False, True), (False, True, False)],
)
def test_the_decision(setting: bool | None, native: bool, want: bool) -> None:
    assert spleeter_bf16_wanted(setting, native) is want


def test_auto_follows_the_hardware() -> None:
    fast = Settings(profile="fast")
    assert frontend_from_settings(fast, native_bf16=False) == FrontendConfig(spleeter_frames=0)
    with_bf16 = frontend_from_settings(fast, native_bf16=True)
    assert with_bf16 == FrontendConfig(spleeter_frames=0, spleeter_bf16=True)


def test_only_when_separating() -> None:
    s = Settings(separation=False, separation_bf16="on")
    assert frontend_from_settings(s, native_bf16=True) == FrontendConfig(separation=False)


def test_reference_settings_keep_todays_front_end() -> None:
    assert frontend_from_settings(Settings()).version == "fe-2587ea00"


def test_the_fast_profile_scores_a_model_with_bf16_separation() -> None:
    model = FrontendConfig()  # trained at T = 512, float32
    fast = Settings(profile="fast")
    got = scoring_frontend(model, fast, native_bf16=True)
    assert got == FrontendConfig(spleeter_frames=0, spleeter_bf16=True)
    assert got.version != scoring_frontend(model, fast, native_bf16=False).version
    assert scoring_frontend(model, Settings(), native_bf16=True) is model  # reference: as trained
    unseparated = FrontendConfig(separation=False)
    assert scoring_frontend(unseparated, fast, native_bf16=True) is unseparated


def test_a_celery_message_may_carry_the_field() -> None:
    old = FrontendConfig().to_dict()
    assert check_frontend(old) == old  # messages from before the field
    new = FrontendConfig(spleeter_bf16=True).to_dict()
    assert FrontendConfig.from_dict(check_frontend(new)) == FrontendConfig(spleeter_bf16=True)
    with pytest.raises(InvalidMessage, match="spleeter_bf16 must be bool"):
        check_frontend({**old, "spleeter_bf16": "yes"})


def test_a_runtime_separates_as_its_front_end_says() -> None:
    """Embedded runs and Celery workers both build their separator from the front end's config
    (Runtime(frontend_override=...)), so a version always means the same computation."""
    from worker.runtime import Runtime

    settings = Settings(device="cpu")  # reference settings: the config alone decides
    for bf16 in (False, True):
        rt = Runtime(
            settings, frontend_override=FrontendConfig(spleeter_frames=0, spleeter_bf16=bf16)
        )
        assert rt.separator is not None and rt.separator.bf16 is bf16
        assert rt.separator.vocals.rewrite_transposed is bf16
