"""Stacked training (several members in one vmapped computation) against one at a time."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from training.model import build_member
from training.stacked import (
    Float32BatchNorm2d,
    StackedMembers,
    dropout_keep,
    member_optimizer_state,
    stack_optimizer_states,
)
from training.train import TrainParams, default_stack
from training.train import run as train_run

torch.set_num_threads(1)


def run(*args: Any, **kwargs: Any) -> Any:
    """``training.train.run`` in float32: these tests compare paths up to float32 rounding."""
    return train_run(*args, **{"amp": False, **kwargs})


CLASSES = ["none", "male", "female"]
TINY = TrainParams(members=3, epochs=2, batch_size=16, arch="resnet10", val_fraction=0.25)


def _task(n: int = 56) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(1)
    y = np.arange(n) % len(CLASSES)
    x = rng.normal(-60, 10, (n, 299, 40))
    for c in range(len(CLASSES)):
        x[y == c, :, 10 * c : 10 * c + 8] += 25
    return x.astype(np.float16), y, [f"s{i % 10}" for i in range(n)]


def _weights(work: Path, members: int) -> list[dict[str, Any]]:
    return [torch.load(work / f"member_{i:02d}.pt", weights_only=True) for i in range(members)]


def _rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Worst relative L2 distance over the state's float tensors. Relative, because AdamW and the
    BatchNorm running statistics amplify rounding in proportion to a tensor's scale (bn1's running
    mean follows log-mel inputs of tens of dB), so an absolute bound holds on one CPU and not on the
    next. Same recipe on other rounding: ~1e-3 here; another seed: ~1.5."""
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).norm() / a[k].double().norm().clamp_min(1e-12))
        for k in a
        if a[k].is_floating_point()
    )


ROUNDING = 0.05  # bound of _rel_diff for "the same training up to float rounding"


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    work = tmp_path_factory.mktemp("seq")
    x, y, g = _task()
    return work, run(TINY, x, y, g, CLASSES, work, stack=1)


def test_dropout_keep_is_the_mask_nn_dropout_draws() -> None:
    feats = torch.ones(5, 512)
    torch.manual_seed(123)
    want = nn.Dropout(0.2).train()(feats)
    got = feats * dropout_keep(5, 512, torch.Generator().manual_seed(123))
    assert torch.equal(got, want)


def test_stacked_forward_equals_each_member_in_eval_of_the_body() -> None:
    torch.manual_seed(0)
    members = [build_member(4, "resnet10") for _ in range(3)]
    for m in members:
        m.train()
    x = torch.randn(3, 4, 1, 299, 40)
    keep = torch.ones(3, 4, 512)
    stack = StackedMembers(members)
    got = stack.forward(x, keep)
    for i, m in enumerate(members):
        m.fc[0].p = 0.0  # keep = 1 is dropout off
        torch.testing.assert_close(got[i], m(x[i]), atol=1e-4, rtol=1e-4)
    # BatchNorm running statistics moved per member, like each member's own did
    for i, m in enumerate(members):
        torch.testing.assert_close(stack.member_state(i)["bn1.running_mean"], m.bn1.running_mean)


def test_optimizer_states_stack_and_unstack() -> None:
    members = [build_member(3, "resnet10") for _ in range(2)]
    states = []
    for m in members:
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        m(torch.randn(2, 1, 299, 40)).sum().backward()
        opt.step()
        states.append(opt.state_dict())
    stacked = stack_optimizer_states(states)
    for i, s in enumerate(states):
        back = member_optimizer_state(stacked, i)
        assert back["param_groups"] == s["param_groups"]
        for j in s["state"]:
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(back["state"][j][key], s["state"][j][key])


def test_stacked_run_matches_sequential_up_to_rounding(
    sequential: tuple[Path, Any], tmp_path: Path
) -> None:
    """Same seeds, same data order, same dropout masks, same AdamW: only float rounding of the
    batched convolutions differs."""
    seq_work, seq = sequential
    x, y, g = _task()
    st = run(TINY, x, y, g, CLASSES, tmp_path, stack=3)
    for a, b in zip(_weights(seq_work, 3), _weights(tmp_path, 3), strict=True):
        assert _rel_diff(a["model"], b["model"]) < ROUNDING
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        assert a["scheduler"] == b["scheduler"]
        assert [r["epoch"] for r in a["history"]] == [r["epoch"] for r in b["history"]]
        for ra, rb in zip(a["history"], b["history"], strict=True):
            assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-2)
    assert st.member_val_acc == pytest.approx(seq.member_val_acc, abs=0.1)
    # and it is not trivially equal because nothing trained: the weights moved from epoch 1
    torch.manual_seed(0)
    assert (
        _rel_diff(_weights(tmp_path, 1)[0]["model"], build_member(3, "resnet10").state_dict())
        > 20 * ROUNDING
    )


def test_stacked_and_sequential_checkpoints_resume_each_other(
    sequential: tuple[Path, Any], tmp_path: Path
) -> None:
    """A run started one at a time and finished stacked (groups of 2 over 3 members, one of
    them alone) ends where the sequential run ended."""
    seq_work, _ = sequential
    x, y, g = _task()
    one_epoch = TrainParams(**{**TINY.to_dict(), "epochs": 2})
    calls = {"n": 0}

    def stop_after_first_epoch() -> bool:
        calls["n"] += 1
        return len(list(tmp_path.glob("member_*.pt"))) == 3 and calls["n"] > 0 and _all_at(1)

    def _all_at(epoch: int) -> bool:
        return all(s["epoch"] == epoch for s in _weights(tmp_path, 3))

    with pytest.raises(Exception, match="stopped"):
        run(one_epoch, x, y, g, CLASSES, tmp_path, stack=1, should_stop=stop_after_first_epoch)
    assert _all_at(1)
    run(one_epoch, x, y, g, CLASSES, tmp_path, stack=2)
    for a, b in zip(_weights(seq_work, 3), _weights(tmp_path, 3), strict=True):
        assert b["epoch"] == 2
        assert _rel_diff(a["model"], b["model"]) < ROUNDING


def test_default_stack_is_all_members_on_cuda_one_on_cpu() -> None:
    assert default_stack("cpu", 20) == 1
    assert default_stack("cuda", 20) == 20


def test_members_in_parallel_processes_match_sequential(
    sequential: tuple[Path, Any], tmp_path: Path
) -> None:
    """training/parallel.py runs the sequential member-epoch in spawned 1-thread processes: the
    same weights (up to the rounding of another thread count), and its features file is gone."""
    seq_work, seq = sequential
    x, y, g = _task()
    records: list[dict] = []
    par = run(TINY, x, y, g, CLASSES, tmp_path, processes=2, progress=records.append)
    assert sorted((r["epoch"], r["member"]) for r in records) == [
        (e, m) for e in (1, 2) for m in range(3)
    ]
    assert [r["epoch"] for r in records] == sorted(r["epoch"] for r in records)  # epoch-major
    for a, b in zip(_weights(seq_work, 3), _weights(tmp_path, 3), strict=True):
        assert _rel_diff(a["model"], b["model"]) < ROUNDING
        assert a["scheduler"] == b["scheduler"]
    assert par.member_val_acc == pytest.approx(seq.member_val_acc, abs=0.1)
    assert not (tmp_path / "features.npy").exists()


def test_parallel_processes_stop_and_resume(sequential: tuple[Path, Any], tmp_path: Path) -> None:
    seq_work, _ = sequential
    x, y, g = _task()
    seen: list[dict] = []
    with pytest.raises(Exception, match="stopped"):  # stop once the first member-epoch is in
        run(TINY, x, y, g, CLASSES, tmp_path, processes=2, progress=seen.append,
            should_stop=lambda: bool(seen))  # fmt: skip
    assert 1 <= len(seen) < 6
    run(TINY, x, y, g, CLASSES, tmp_path, processes=2)
    for a, b in zip(_weights(seq_work, 3), _weights(tmp_path, 3), strict=True):
        assert b["epoch"] == 2 and _rel_diff(a["model"], b["model"]) < ROUNDING


def test_bf16_reaches_every_path(tmp_path: Path) -> None:
    """amp=True (SCORER_TRAIN_BF16=on, or auto where bf16 is native) is honoured one at a time,
    stacked and in processes: each member-epoch records it, and the (float32) weights differ from
    the float32 run's by more than float32 rounding. Small: on a CPU without native bf16 the
    emulated bf16 convolutions are slow (the TINY size took 5 minutes on such a CPU): 16
    snippets, one AdamW step per member, is enough for bf16's rounding to show in the weights
    (and in the BatchNorm statistics, which follow the bf16 activations directly)."""
    params = TrainParams(members=2, epochs=1, batch_size=16, arch="resnet10", val_fraction=0.25)
    x, y, g = _task(16)
    seq_work = tmp_path / "float32"
    run(params, x, y, g, CLASSES, seq_work, stack=1)
    for mode, kw in (("one", {"stack": 1}), ("stacked", {"stack": 2}), ("procs", {"processes": 2})):
        work = tmp_path / mode
        run(params, x, y, g, CLASSES, work, amp=True, **kw)
        for a, b in zip(_weights(seq_work, 2), _weights(work, 2), strict=True):
            assert all(r["bf16"] is True for r in b["history"]), mode
            assert all(r["bf16"] is False for r in a["history"])
            floats = [v for v in b["model"].values() if v.is_floating_point()]
            assert all(v.dtype == torch.float32 for v in floats)
            assert _rel_diff(a["model"], b["model"]) > 1e-4, mode


def test_batchnorm_of_the_stacked_body_computes_in_float32() -> None:
    """On CUDA, vmapped BatchNorm with bf16 activations and float32 running statistics fails in
    backward (seen on an H200); the stacked body's BatchNorms therefore upcast their input."""
    torch.manual_seed(0)
    stack = StackedMembers([build_member(4, "resnet10") for _ in range(2)])
    bns = [m for m in stack._body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is Float32BatchNorm2d for m in bns)

    bn = Float32BatchNorm2d(8).train()
    x = torch.randn(4, 8, 5, 5)
    out = bn(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, nn.BatchNorm2d(8).train()(x.bfloat16().float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = stack.forward(torch.randn(2, 3, 1, 299, 40), torch.ones(2, 3, 512))
    logits.float().sum().backward()
    assert all(p.grad is not None for p in stack.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stacked_bf16_training_runs_on_cuda(tmp_path: Path) -> None:
    x, y, groups = _task(40)
    params = TrainParams(members=2, epochs=1, arch="resnet10")
    result = train_run(
        params,
        x,
        y,
        groups,
        CLASSES,
        tmp_path,
        device="cuda",
        stack=2,
        amp=True,
        show_progress=False,
    )
    assert len(result.member_val_acc) == 2
