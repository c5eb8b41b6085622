"""Two-voice training examples made from one-voice ones: label-preserving data for `multi`.

`multi` is the class the log-mel members learn worst on singers never heard (recall 0.21 with the
voice head, docs/RESULTS.md 0f): mir1k4 holds 13 duet pairs against 14 solo singers. Two solo
voices of two different singers sung together are, by the class's definition, more than one
voice, so every pair of solo training snippets is a `multi` example the data did not have.

The features are cached log-mels of the separated vocals, ``20·log10`` of a mel power (see
../shared/FRONTEND.md), and the powers of two independent voices add, so the log-mel of the
mixture is the power sum of the two cached ones; no audio is decoded again. (The cross term of
the two signals averages out over a mel band; the approximation is the same one Spleeter's masks
make.) Mixtures are drawn from the training side only, after the singer split, so validation and
held-out singers stay unheard, and they are seeded, so a resumed run trains on the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The classes a mixture is made from (one voice each) and the class it becomes.
SOLO_CLASSES = ("male", "female")
MULTI_CLASS = "multi"
MAX_QUIETER_DB = 6.0  # the second voice is 0-6 dB quieter (amplitude), as duets are balanced


def power_sum_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Log-mel of the sum of two signals from their log-mels (``20·log10`` of a power each)."""
    k = np.log(10.0) / 20.0
    return (np.logaddexp(a.astype(np.float64) * k, b.astype(np.float64) * k) / k).astype(np.float32)


def gain_db(x: np.ndarray, amplitude_db: float) -> np.ndarray:
    """``x`` (``20·log10`` of a power) of the signal with its amplitude moved by
    ``amplitude_db``: 20·log10(a²·P) = 20·log10(P) + 2·(20·log10 a)."""
    return x + 2.0 * amplitude_db


def mixing_pairs(
    y: np.ndarray,
    groups: Sequence[str | None] | None,
    candidates: np.ndarray,
    solo: Sequence[int],
    n: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs (i, j) of one-voice samples among ``candidates`` whose singers differ, and the
    amplitude in dB (0 to -6) of each pair's second voice. A sample whose group is None or ""
    is its own singer. Empty arrays when fewer than two singers have one-voice samples."""
    cand = np.asarray([i for i in candidates if y[i] in set(solo)], dtype=np.int64)

    def singer(i: int) -> str:
        g = groups[i] if groups is not None else None
        return g if g else f"#{i}"

    names = np.array([singer(int(i)) for i in cand], dtype=object)
    if n <= 0 or len(set(names)) < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    rng = np.random.default_rng([seed, 0x6D6978])  # its own stream: "mix"
    pairs = np.zeros((n, 2), np.int64)
    filled = 0
    while filled < n:
        a = rng.integers(0, len(cand), n - filled)
        b = rng.integers(0, len(cand), n - filled)
        ok = names[a] != names[b]
        k = int(ok.sum())
        pairs[filled : filled + k, 0] = cand[a[ok]]
        pairs[filled : filled + k, 1] = cand[b[ok]]
        filled += k
    quieter = -rng.uniform(0.0, MAX_QUIETER_DB, n).astype(np.float32)
    return pairs, quieter


def mix_features(x: np.ndarray, pairs: np.ndarray, quieter_db: np.ndarray) -> np.ndarray:
    """(n, frames, mels) float16 log-mels of the pairs' mixtures (second voice ``quieter_db``)."""
    out = np.empty((len(pairs), *x.shape[1:]), dtype=np.float16)
    for k, ((i, j), g) in enumerate(zip(pairs, quieter_db, strict=True)):
        out[k] = power_sum_db(np.asarray(x[i]), gain_db(np.asarray(x[j], np.float32), float(g)))
    return out


def with_mixtures(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str | None] | None,
    classes: Sequence[str],
    train_idx: np.ndarray,
    n: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, train_idx) with ``n`` two-voice `multi` examples appended to the training side.

    Raises ValueError when the classes have no `multi` or no one-voice class to mix."""
    if n <= 0:
        return x, y, train_idx
    solo = [classes.index(c) for c in SOLO_CLASSES if c in classes]
    if MULTI_CLASS not in classes or not solo:
        raise ValueError(
            f"mix_multi needs a {MULTI_CLASS!r} class and at least one of "
            f"{', '.join(map(repr, SOLO_CLASSES))} among the classes, got {list(classes)} "
            "(train with --mix-multi 0)"
        )
    pairs, quieter = mixing_pairs(y, groups, train_idx, solo, n, seed)
    if len(pairs) == 0:
        raise ValueError("mix_multi needs one-voice training snippets of at least two singers")
    mixed = mix_features(x, pairs, quieter)
    x_all = np.concatenate([np.asarray(x), mixed])
    y_all = np.concatenate([y, np.full(len(mixed), classes.index(MULTI_CLASS), y.dtype)])
    new = np.arange(len(x), len(x_all), dtype=train_idx.dtype)
    return x_all, y_all, np.concatenate([train_idx, new])
