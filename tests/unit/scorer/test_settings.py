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
