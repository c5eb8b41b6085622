"""The training recipe, resumability and a learnable task (tiny configs, CPU, 1 thread)."""

import json
import math
import shutil
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

from training.ensemble import load_ensemble
from training.model import build_member
from training.train import (
    PRESETS,
    TrainingStopped,
    TrainParams,
    augment_seed,
    make_criterion,
    make_optimizer,
    make_scheduler,
    member_seeds,
    mixup_loss,
    preset_params,
    run,
)

torch.set_num_threads(1)

CLASSES = ["none", "male", "female"]
TINY = TrainParams(members=2, epochs=3, batch_size=16, arch="resnet10", val_fraction=0.25)


def _task(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Noise at -60 dB; class c is louder in mel bands 10c..10c+8. 12 singers."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    x = rng.normal(-60, 10, (n, 299, 40))
    for c in range(len(CLASSES)):
        x[y == c, :, 10 * c : 10 * c + 8] += 25
    return x.astype(np.float16), y, [f"s{i % 12}" for i in range(n)]


def _states(work_dir: Path, members: int) -> list[dict[str, Any]]:
    return [torch.load(work_dir / f"member_{i:02d}.pt", weights_only=True) for i in range(members)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, list[dict]]:
    """One uninterrupted tiny run, shared by the tests that inspect its outputs."""
    work = tmp_path_factory.mktemp("run")
    x, y, g = _task()
    records: list[dict] = []
    result = run(TINY, x, y, g, CLASSES, work, progress=records.append, meta={"frontend": "fe-x"})
    return work, result, records


def test_learnable_task_reaches_high_validation_accuracy(finished: tuple) -> None:
    _, result, _ = finished
    assert result.ensemble_val_acc is not None and result.ensemble_val_acc >= 0.9
    assert result.ensemble_val_macro_f1 >= 0.9
    assert result.n_train + result.n_val == 64 and result.n_val >= 12


def test_result_history_and_progress(finished: tuple) -> None:
    _, result, records = finished
    assert [(r["epoch"], r["member"]) for r in records] == [
        (e, m) for e in (1, 2, 3) for m in (0, 1)
    ]
    assert records[-1]["fraction_done"] == 1.0
    assert records[0]["fraction_done"] == pytest.approx(1 / 6)
    assert {"train_loss", "val_acc", "epochs", "members"} <= set(records[0])
    assert len(result.history) == 6 and len(result.member_val_acc) == 2
    assert len(result.class_weights) == 3 and sum(map(sum, result.confusion)) == result.n_val


def test_checkpoints_load_weights_only_with_full_state(finished: tuple) -> None:
    work, _, _ = finished
    for i, ckpt in enumerate(_states(work, 2)):
        assert ckpt["epoch"] == 3 and ckpt["member"] == i
        assert {"model", "optimizer", "scheduler", "history", "params"} <= set(ckpt)
        assert ckpt["params"] == TINY.to_dict()
        assert len(ckpt["history"]) == 3
    assert not list(work.glob("*.tmp"))
    stored = json.loads((work / "params.json").read_text())
    assert stored["params"] == TINY.to_dict()


def test_saved_ensemble_round_trip_gives_same_predictions(finished: tuple) -> None:
    _, result, _ = finished
    ens = load_ensemble(result.ensemble_dir, "cpu", amp=False)  # exact: float32
    assert ens.meta["frontend"] == "fe-x" and ens.classes == CLASSES
    assert ens.meta["metrics"]["ensemble_val_acc"] == result.ensemble_val_acc
    # the default trains in float32 (bf16 is an option), and the model says so
    assert ens.meta["train_bf16"] is False
    assert {r["bf16"] for r in result.history} == {False}
    x = torch.from_numpy(_task(n=5, seed=9)[0])
    with torch.no_grad():
        expected = torch.stack(
            [torch.softmax(m.eval()(x[:, None].float()), 1) for m in result.members]
        )
    assert torch.equal(ens.member_proba(x), expected)
    # the temperature fitted on validation goes with the weights and is applied when scoring
    assert ens.temperature == ens.meta["temperature"] == result.temperature != 1.0
    assert ens.meta["metrics"]["temperature"] == result.temperature
    assert ens.meta["metrics"]["val_ece_calibrated"] <= ens.meta["metrics"]["val_ece"] + 1e-9
    calibrated = torch.softmax(expected.mean(0).log() / result.temperature, 1)
    assert torch.allclose(ens.predict_proba(x), calibrated, atol=1e-6)


def test_interrupted_then_resumed_equals_uninterrupted(finished: tuple, tmp_path: Path) -> None:
    """Stopped twice via should_stop: two batches into member 1's first epoch, then right after
    member-epoch 3; resumed each time. The final checkpoints (weights, BN statistics, history)
    are bit-identical to the uninterrupted run's, and no finished member-epoch is redone."""
    work, _, _ = finished
    x, y, g = _task()
    seen: list[dict] = []

    def stopper(after_member_epochs: int, extra_calls: int):
        calls = {"n": 0}

        def should_stop() -> bool:
            if len(seen) < after_member_epochs:
                return False
            calls["n"] += 1
            return calls["n"] > extra_calls

        return should_stop

    for k, extra in [(1, 2), (3, 0)]:
        with pytest.raises(TrainingStopped) as stopped:
            run(
                TINY,
                x,
                y,
                g,
                CLASSES,
                tmp_path,
                progress=seen.append,
                should_stop=stopper(k, extra),
            )
        assert stopped.value.done == k == len(seen)
        assert stopped.value.total == 6
    run(TINY, x, y, g, CLASSES, tmp_path, progress=seen.append)
    assert [(r["epoch"], r["member"]) for r in seen] == [(e, m) for e in (1, 2, 3) for m in (0, 1)]
    for ref, got in zip(_states(work, 2), _states(tmp_path, 2), strict=True):
        assert ref["model"].keys() == got["model"].keys()
        for k in ref["model"]:
            assert torch.equal(ref["model"][k], got["model"][k]), k
        assert ref["history"] == got["history"]


def test_finished_run_resumes_without_training(finished: tuple, tmp_path: Path) -> None:
    work, result, _ = finished
    shutil.copytree(work, tmp_path / "w")
    x, y, g = _task()
    records: list[dict] = []
    again = run(TINY, x, y, g, CLASSES, tmp_path / "w", progress=records.append)
    assert records == []
    assert again.ensemble_val_acc == result.ensemble_val_acc


def test_resume_with_other_params_refused(finished: tuple) -> None:
    work, _, _ = finished
    x, y, g = _task()
    other = TrainParams.from_dict({**TINY.to_dict(), "lr": 1e-3})
    with pytest.raises(ValueError, match=r"lr: 0.0003 -> 0.001"):
        run(other, x, y, g, CLASSES, work)
    with pytest.raises(ValueError, match="training data differ"):
        run(TINY, x, (y + 1) % 3, g, CLASSES, work)


def test_params_round_trip_and_validation() -> None:
    p = TrainParams()
    assert (p.members, p.epochs, p.batch_size, p.lr, p.weight_decay) == (20, 20, 32, 3e-4, 1e-5)
    assert (p.mixup_alpha, p.arch, p.normalize, p.val_fraction) == (0.4, "resnet34", "none", 0.2)
    assert TrainParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError, match="unknown training parameters: width"):
        TrainParams.from_dict({"width": 2})
    with pytest.raises(ValueError, match="unknown arch"):
        TrainParams(arch="vgg").validate()


def test_recipe_optimizer_and_scheduler() -> None:
    model = build_member(4, "resnet10")
    opt = make_optimizer(model, TrainParams())
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["weight_decay"] == 1e-5
    sched = make_scheduler(opt, epochs=20, steps_per_epoch=125)
    assert isinstance(sched, CosineAnnealingWarmRestarts)
    assert sched.T_0 == 20 * 125 // 2 == 1250
    for _ in range(1250):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4)  # restarted after T_0 batches
    assert make_scheduler(opt, epochs=1, steps_per_epoch=1).T_0 == 1


def test_mixup_loss_is_plain_ce_at_lam_one_and_linear_otherwise() -> None:
    torch.manual_seed(0)
    logits, y_a, y_b = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6) % 4
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 2.0, 1.0]))
    assert torch.equal(mixup_loss(ce, logits, y_a, y_b, 1.0), ce(logits, y_a))
    expected = 0.3 * ce(logits, y_a) + 0.7 * ce(logits, y_b)
    torch.testing.assert_close(mixup_loss(ce, logits, y_a, y_b, 0.3), expected)


def test_member_seeds_depend_on_member_and_epoch_only() -> None:
    assert member_seeds(0, 1, 2) == member_seeds(0, 1, 2)
    assert member_seeds(0, 1, 2) != member_seeds(0, 1, 3)
    assert member_seeds(0, 1, 2) != member_seeds(0, 2, 2)
    assert member_seeds(1, 0, 2) == member_seeds(0, 1, 2)  # member i is seeded with seed + i


# --- presets, label smoothing and augmentation ----------------------------------------------

TINY_AUG = TrainParams.from_dict(
    {
        **TINY.to_dict(),
        "epochs": 2,
        "label_smoothing": 0.1,
        "aug_gain_db": 6.0,
        "aug_shift_frames": 30,
        "aug_spec_time_masks": 2,
        "aug_spec_freq_masks": 2,
    }
)


def test_reference_preset_is_the_default_and_augmented_only_adds_the_knobs() -> None:
    assert PRESETS["reference"] == TrainParams().to_dict()
    assert preset_params("reference") == TrainParams()
    assert TrainParams().augment_config().is_identity
    changed = {
        k for k in PRESETS["reference"] if PRESETS["augmented"][k] != PRESETS["reference"][k]
    }
    assert changed == {
        "label_smoothing",
        "aug_gain_db",
        "aug_shift_frames",
        "aug_spec_time_masks",
        "aug_spec_freq_masks",
    }
    cpu = {k for k in PRESETS["reference"] if PRESETS["cpu"][k] != PRESETS["reference"][k]}
    assert cpu == {"members", "epochs", "arch", "mix_multi"}  # the measured CPU recipe
    assert preset_params("cpu", members=5).members == 5
    aug = preset_params("augmented", epochs=5)
    assert (aug.epochs, aug.label_smoothing, aug.aug_gain_db) == (5, 0.1, 6.0)
    cfg = aug.augment_config()
    assert (cfg.gain_db, cfg.shift_frames, cfg.spec_time_masks, cfg.spec_freq_masks) == (
        6.0,
        30,
        2,
        2,
    )
    with pytest.raises(ValueError, match="unknown preset"):
        preset_params("best")


def test_old_params_dicts_without_the_new_keys_load_as_the_reference() -> None:
    old = {k: v for k, v in TINY.to_dict().items() if k != "label_smoothing" and "aug" not in k}
    p = TrainParams.from_dict(old)
    assert p == TINY and p.label_smoothing == 0.0 and p.augment_config().is_identity


@pytest.mark.parametrize(
    ("field", "value"),
    [("label_smoothing", 1.0), ("label_smoothing", -0.1), ("aug_gain_db", -1.0),
     ("aug_shift_frames", -1), ("aug_spec_time_masks", -1), ("aug_spec_freq_masks", -2)],
)  # fmt: skip
def test_invalid_knobs_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TrainParams.from_dict({field: value}).validate()


def test_label_smoothing_hand_case_and_composition_with_weights_and_mixup() -> None:
    """p = softmax([ln 3, 0]) = (0.75, 0.25), label 0, s = 0.2, C = 2: target (0.9, 0.1)."""
    logits, y0, y1 = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0]), torch.tensor([1])
    plain = make_criterion(np.ones(2, np.float32), TrainParams())
    smooth = make_criterion(np.ones(2, np.float32), TrainParams(label_smoothing=0.2))
    assert float(plain(logits, y0)) == pytest.approx(-math.log(0.75))
    expected = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
    assert float(smooth(logits, y0)) == pytest.approx(expected)
    assert float(smooth(logits, y0)) > float(plain(logits, y0))  # a confident right answer pays
    # class weights (2, 1): torch weighs the smoothing term per class, over the label's weight
    weighted = make_criterion(np.array([2.0, 1.0], np.float32), TrainParams(label_smoothing=0.2))
    expected_w = 0.8 * -math.log(0.75) + 0.1 * -(2 * math.log(0.75) + math.log(0.25)) / 2
    assert float(weighted(logits, y0)) == pytest.approx(expected_w)
    # Mixup: lam * loss(label a) + (1 - lam) * loss(label b), each smoothed
    expected_b = -(0.1 * math.log(0.75) + 0.9 * math.log(0.25))
    got = float(mixup_loss(smooth, logits, y0, y1, 0.3))
    assert got == pytest.approx(0.3 * expected + 0.7 * expected_b)


def test_augment_seed_is_its_own_stream_per_member_epoch() -> None:
    assert augment_seed(0, 1, 2) == augment_seed(1, 0, 2)
    assert augment_seed(0, 1, 2) != augment_seed(0, 1, 3)
    assert augment_seed(0, 1, 2) not in member_seeds(0, 1, 2)


@pytest.fixture(scope="module")
def finished_aug(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("run_aug")
    x, y, g = _task()
    run(TINY_AUG, x, y, g, CLASSES, work)
    return work


def test_augmented_run_records_its_params_and_trains_other_weights(
    finished: tuple, finished_aug: Path
) -> None:
    assert json.loads((finished_aug / "params.json").read_text())["params"] == TINY_AUG.to_dict()
    ref = torch.load(finished[0] / "member_00.pt", weights_only=True)
    ckpt = torch.load(finished_aug / "member_00.pt", weights_only=True)
    assert ckpt["params"]["aug_spec_freq_masks"] == 2
    assert ckpt["history"][0]["epoch"] == 1
    # same init and shuffles as the reference run, but other batches, loss (and schedule)
    assert ckpt["history"][0]["train_loss"] != ref["history"][0]["train_loss"]


def test_interrupted_then_resumed_equals_uninterrupted_with_augmentation(
    finished_aug: Path, tmp_path: Path
) -> None:
    """As the reference test, with every augmentation and label smoothing on: the augmentation
    draws come from the member-epoch's derived generator, so a resumed run is bit-identical."""
    x, y, g = _task()
    seen: list[dict] = []
    calls = {"n": 0}

    def stop_two_batches_into_member_1() -> bool:
        if len(seen) < 1:
            return False
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(TrainingStopped) as stopped:
        run(TINY_AUG, x, y, g, CLASSES, tmp_path, progress=seen.append,
            should_stop=stop_two_batches_into_member_1)  # fmt: skip
    assert stopped.value.done == 1
    run(TINY_AUG, x, y, g, CLASSES, tmp_path, progress=seen.append)
    assert [(r["epoch"], r["member"]) for r in seen] == [(e, m) for e in (1, 2) for m in (0, 1)]
    for ref, got in zip(_states(finished_aug, 2), _states(tmp_path, 2), strict=True):
        for k in ref["model"]:
            assert torch.equal(ref["model"][k], got["model"][k]), k
        assert ref["history"] == got["history"]


# --- `scorer train` options -> TrainParams (scorer/cli/train.py) ----------------------------


def test_cli_preset_names_and_options_cover_the_presets_and_every_param() -> None:
    from scorer.cli.train import PRESET_NAMES, RECIPE_OPTIONS, train

    assert set(PRESET_NAMES) == set(PRESETS)
    reachable = set(RECIPE_OPTIONS) | {"aug_spec_time_masks", "aug_spec_freq_masks"}
    assert reachable == set(TrainParams().to_dict())
    names = {p.name for p in train.params}
    assert set(RECIPE_OPTIONS) | {"preset", "aug_spec_masks"} <= names
    assert next(p for p in train.params if p.name == "preset").default == "reference"


def test_cli_options_override_the_preset() -> None:
    from scorer.cli.train import RECIPE_OPTIONS, train_params_from_options

    none_given = dict.fromkeys([*RECIPE_OPTIONS, "aug_spec_masks"])
    assert train_params_from_options("reference", none_given) == TrainParams()
    assert train_params_from_options("augmented", none_given) == preset_params("augmented")
    tp = train_params_from_options(
        "augmented",
        {**none_given, "label_smoothing": 0.0, "aug_spec_masks": 3, "epochs": 5, "seed": 7},
    )
    assert (tp.label_smoothing, tp.epochs, tp.seed, tp.aug_gain_db) == (0.0, 5, 7, 6.0)
    assert (tp.aug_spec_time_masks, tp.aug_spec_freq_masks) == (3, 3)
    ref = train_params_from_options("reference", {"aug_gain_db": 3.0, "aug_spec_masks": 0})
    assert ref == TrainParams(aug_gain_db=3.0)


@pytest.mark.parametrize(
    ("preset", "options", "message"),
    [
        ("reference", {"label_smoothing": 1.5}, "label_smoothing"),
        ("best", {}, "unknown preset"),
        ("reference", {"aug_spec_time_masks": 1}, "not a training option"),
    ],
)
def test_cli_options_invalid_values_are_usage_errors(
    preset: str, options: dict, message: str
) -> None:
    from scorer.cli.train import train_params_from_options

    with pytest.raises(click.UsageError, match=message):
        train_params_from_options(preset, options)
