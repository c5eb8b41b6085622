"""The ensemble: fused == loop, the uncertainty summary, and the safetensors round trip."""

import json
import math
from pathlib import Path

import pytest
import torch

from training.ensemble import Ensemble, load_ensemble, native_bf16, save_members, summarize
from training.model import build_member

torch.set_num_threads(1)

CLASSES = ["none", "male", "female", "multi"]


def _members(n: int = 3, arch: str = "resnet10") -> list[torch.nn.Module]:
    """Members with non-trivial batchnorm statistics: a few train steps, then random stats."""
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        m = build_member(len(CLASSES), arch)
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        m.train()
        for _ in range(2):
            x = torch.randn(4, 1, 299, 40) * 20 - 60
            loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 3]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        out.append(m.eval())
    return out


@pytest.fixture(scope="module")
def members() -> list[torch.nn.Module]:
    return _members()


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("normalize", ["none", "per_snippet"])
def test_fused_equals_loop(members: list[torch.nn.Module], batch: int, normalize: str) -> None:
    torch.manual_seed(batch)
    x = (torch.randn(batch, 299, 40) * 30 - 80).half()
    loop = Ensemble(members, CLASSES, normalize=normalize, mode="loop", amp=False)
    fused = Ensemble(members, CLASSES, normalize=normalize, mode="fused", amp=False)
    p_loop, p_fused = loop.member_proba(x), fused.member_proba(x)
    assert p_loop.shape == (3, batch, 4)
    torch.testing.assert_close(p_fused, p_loop, atol=1e-5, rtol=0)
    # The members really differ, so a fused run that used one member's weights would fail.
    assert (p_loop[0] - p_loop[1]).abs().max() > 1e-3


def test_fused_uses_running_stats_not_batch_stats(members: list[torch.nn.Module]) -> None:
    """In eval mode a snippet's probabilities must not depend on what else is in the batch."""
    torch.manual_seed(0)
    x = torch.randn(5, 1, 299, 40) * 30 - 80
    fused = Ensemble(members, CLASSES, mode="fused", amp=False)
    torch.testing.assert_close(
        fused.predict_proba(x[:1]), fused.predict_proba(x)[:1], atol=1e-5, rtol=0
    )


def test_predict_proba_is_mean_of_member_softmax(members: list[torch.nn.Module]) -> None:
    x = torch.randn(2, 1, 299, 40) * 30 - 80
    ens = Ensemble(members, CLASSES, amp=False)
    assert ens.mode == "loop"  # auto on CPU
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
    torch.testing.assert_close(ens.predict_proba(x), expected)
    torch.testing.assert_close(ens.predict_proba(x).sum(1), torch.ones(2))


def test_summarize_hand_made_case() -> None:
    member_probs = torch.tensor(
        [
            [[0.9, 0.1], [0.0, 1.0]],
            [[0.8, 0.2], [0.0, 1.0]],
            [[0.4, 0.6], [0.0, 1.0]],
        ]
    )  # (M=3, B=2, C=2)
    s = summarize(member_probs)
    torch.testing.assert_close(s["proba"], torch.tensor([[0.7, 0.3], [0.0, 1.0]]))
    assert s["label_idx"].tolist() == [0, 1]
    torch.testing.assert_close(s["confidence"], torch.tensor([0.7, 1.0]))
    torch.testing.assert_close(s["disagreement"], torch.tensor([1 / 3, 0.0]))
    h0 = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    torch.testing.assert_close(s["entropy"], torch.tensor([h0, 0.0]))


def test_summarize_uniform_has_max_entropy() -> None:
    s = summarize(torch.full((2, 1, 4), 0.25))
    torch.testing.assert_close(s["entropy"], torch.tensor([math.log(4)]))


def test_save_load_round_trip(members: list[torch.nn.Module], tmp_path: Path) -> None:
    meta = {"classes": CLASSES, "arch": "resnet10", "normalize": "per_snippet", "frontend": "fe-1"}
    save_members(tmp_path, members, meta)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "member_00.safetensors",
        "member_01.safetensors",
        "member_02.safetensors",
        "meta.json",
    ]
    stored = json.loads((tmp_path / "meta.json").read_text())
    assert stored["n_members"] == 3 and stored["frontend"] == "fe-1"

    ens = load_ensemble(tmp_path, "cpu", amp=False)
    assert ens.classes == CLASSES and ens.normalize == "per_snippet" and ens.n_members == 3
    x = torch.randn(4, 1, 299, 40) * 30 - 80
    original = Ensemble(members, CLASSES, normalize="per_snippet", amp=False)
    assert torch.equal(ens.member_proba(x), original.member_proba(x))
    for a, b in zip(members, ens.members, strict=True):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)


def test_save_members_requires_meta_keys(members: list[torch.nn.Module], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="normalize"):
        save_members(tmp_path, members, {"classes": CLASSES, "arch": "resnet10"})


def test_load_ensemble_missing_dir_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an ensemble"):
        load_ensemble(tmp_path, "cpu")


def test_unknown_mode_rejected(members: list[torch.nn.Module]) -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        Ensemble(members, CLASSES, mode="graph")  # type: ignore[arg-type]


def test_bf16_is_used_where_the_hardware_runs_it_and_stays_close_to_float32(
    members: list[torch.nn.Module],
) -> None:
    """bf16 autocast (on by default on a GPU or a CPU with AVX512-BF16/AMX, ~2x faster there)
    runs on any CPU when asked: close to float32, not equal to it, probabilities still sum to 1."""
    assert native_bf16("cuda") and not native_bf16("meta")
    assert Ensemble(members, CLASSES).amp == native_bf16("cpu")
    torch.manual_seed(3)
    x = torch.randn(6, 1, 299, 40) * 30 - 80
    f32 = Ensemble(members, CLASSES, normalize="per_snippet", amp=False)
    bf16 = Ensemble(members, CLASSES, normalize="per_snippet", amp=True)
    assert not f32.amp and bf16.amp
    p32, p16 = f32.member_proba(x), bf16.member_proba(x)
    assert p16.dtype == torch.float32
    torch.testing.assert_close(p16.sum(-1), torch.ones(3, 6))
    diff = float((p16 - p32).abs().max())
    assert 0 < diff < 0.05
    fused = Ensemble(members, CLASSES, normalize="per_snippet", amp=True, mode="fused")
    torch.testing.assert_close(fused.member_proba(x), p16, atol=0.05, rtol=0)


def test_runtime_reads_infer_bf16(members: list[torch.nn.Module], tmp_path: Path) -> None:
    from scorer.settings import Settings
    from worker.runtime import Runtime

    meta = {"classes": CLASSES, "arch": "resnet10", "normalize": "none"}
    save_members(tmp_path / "m", members, meta)
    for value, want in (("on", True), ("off", False), ("auto", native_bf16("cpu"))):
        rt = Runtime(Settings(data_dir=tmp_path, device="cpu", infer_bf16=value))
        assert rt.ensemble(str(tmp_path / "m")).amp is want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_mode_on_cuda_is_fused_and_agrees_with_the_loop() -> None:
    """The GPU worker's default. It failed on an H200 ("NYI: querying is_contiguous inside of
    vmap ...") while the fused mode took channels_last inputs; fused now stays contiguous."""
    members = _members(3)
    x = torch.randn(5, 299, 40) * 20 - 60
    auto = Ensemble(members, CLASSES, device="cuda", amp=False)
    loop = Ensemble(members, CLASSES, device="cuda", mode="loop", amp=False)
    assert auto.mode == "fused" and loop.channels_last
    torch.testing.assert_close(auto.predict_proba(x), loop.predict_proba(x), atol=1e-4, rtol=0)


def test_bf16_on_cuda_only_for_big_batches_when_left_to_the_hardware() -> None:
    """Measured on an H200: bf16 slower than float32 at 1 and 32 windows, 1.54x at 256."""
    from training.ensemble import CUDA_BF16_MIN_BATCH, use_bf16

    assert not use_bf16("cuda", 32, True, auto=True)
    assert use_bf16("cuda", CUDA_BF16_MIN_BATCH, True, auto=True)
    assert use_bf16("cuda", 1, True, auto=False)  # asked for explicitly: always
    assert use_bf16("cpu", 1, True, auto=True)  # a CPU with native bf16 gains at every batch
    assert not use_bf16("cuda", 512, False, auto=False)


def test_saved_temperature_is_loaded_and_applied(
    members: list[torch.nn.Module], tmp_path: Path
) -> None:
    meta = {"classes": CLASSES, "arch": "resnet10", "normalize": "none"}
    save_members(tmp_path / "raw", members, meta)
    save_members(tmp_path / "cal", members, {**meta, "temperature": 2.0})
    raw = load_ensemble(tmp_path / "raw", "cpu", amp=False)
    cal = load_ensemble(tmp_path / "cal", "cpu", amp=False)
    assert raw.temperature == 1.0 and cal.temperature == 2.0  # no temperature: as before
    x = torch.randn(5, 299, 40) * 20 - 60
    members_p = raw.member_proba(x)
    assert torch.equal(cal.member_proba(x), members_p)  # members stay as they are
    mean = members_p.mean(0)
    assert torch.equal(raw.predict_proba(x), mean) and torch.equal(raw.predict(x)["proba"], mean)
    expected = torch.softmax(mean.log() / 2.0, -1)
    assert torch.allclose(cal.predict_proba(x), expected, atol=1e-6)
    assert torch.allclose(cal.predict(x)["proba"], expected, atol=1e-6)
    # a softer ensemble (T > 1): higher entropy, lower confidence, the same decisions
    r, c = raw.predict(x), cal.predict(x)
    assert (c["entropy"] > r["entropy"]).all() and (c["confidence"] < r["confidence"]).all()
    assert torch.equal(c["label_idx"], r["label_idx"])
    assert torch.equal(c["disagreement"], r["disagreement"])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), "2"])
def test_invalid_temperature_is_refused(members: list[torch.nn.Module], bad: object) -> None:
    with pytest.raises(ValueError, match="temperature"):
        Ensemble(members, CLASSES, meta={"temperature": bad})
