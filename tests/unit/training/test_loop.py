"""The training strategies share one loop module and do not import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import training.loop as loop
import training.train as train

TRAINING = Path(loop.__file__).parent


def imported_modules(module: str) -> set[str]:
    """Every ``training.*`` module that ``module``'s source imports, at any depth of the file
    (imports inside functions count: they are how the old circle was hidden)."""
    tree = ast.parse((TRAINING / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("training.")}


@pytest.mark.parametrize("strategy", ["stacked", "parallel"])
def test_strategies_use_the_loop_and_never_the_chooser(strategy: str) -> None:
    imports = imported_modules(strategy)
    assert "training.loop" in imports
    assert "training.train" not in imports


def test_the_loop_imports_no_strategy() -> None:
    assert not imported_modules("loop") & {
        "training.train",
        "training.stacked",
        "training.parallel",
    }


@pytest.mark.parametrize(
    "name",
    ["EpochRun", "TrainingStopped", "make_criterion", "make_optimizer", "make_scheduler",
     "member_seeds", "augment_seed", "mixup_loss", "train_one_epoch", "evaluate", "EVAL_BATCH"],
)  # fmt: skip
def test_shared_names_stay_importable_from_train(name: str) -> None:
    assert getattr(train, name) is getattr(loop, name)
