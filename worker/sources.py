"""One item's content -> its decoded audio, or, for a long file, its features made in blocks.

Why two ways: a short file (the common 3 s snippet) is decoded whole so a batch of them is
separated and featurised together (equal lengths batch on a GPU); a file longer than
`BLOCKS_AFTER_S` is featurised block by block from its path or bytes (pipeline/blocks.py) so
memory stays flat however long it is. Both give the same windows (tests/unit/pipeline/
test_blocks.py). A content that travels as a path (`FileRef`) is checked against its sha before
it is decoded and again for a change after, so what is scored is what was enqueued.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.blocks import Featurised, featurize_blocks, header
from pipeline.decode import Audio, Source, decode
from scorer.errors import InputError
from worker.inputs import MB, FileRef, still_same, verified
from worker.runtime import Runtime

BLOCKS_AFTER_S = 60.0
"""Files longer than this are featurised in blocks: at most 21 MB of 44.1 kHz stereo is whole."""


def load(rt: Runtime, sha: str, content: bytes | FileRef) -> Audio | Featurised:
    """Decoded audio of a short file, or the finished windows of a long one.

    Raises:
        InputError: the one-line reason the item fails (unreadable, too long for
            SCORER_MAX_DURATION_S, a path whose bytes are not the sha's, a long file whose
            featurising failed).
    """
    limit = rt.settings.max_duration_s or None
    before = None
    source: Source = content if isinstance(content, bytes) else Path(content.path)
    if isinstance(content, FileRef):
        before = verified(content, sha, int(rt.settings.max_file_mb * MB))
    head = header(source, max_duration_s=limit)
    got: Audio | Featurised
    if head.duration_s <= BLOCKS_AFTER_S:
        got = decode(source, max_duration_s=limit)
    else:
        got = _featurise_long(rt, source)
    if isinstance(content, FileRef) and before is not None and not still_same(content.path, before):
        raise InputError(f"{content.path}: changed while it was read; enqueue it again")
    return got


def _featurise_long(rt: Runtime, source: Source) -> Featurised:
    try:
        return featurize_blocks(
            source,
            rt.frontend,
            rt.separator,
            device=rt.device,
            min_tail_s=rt.settings.min_tail_s,
            voice=rt.voice,
        )
    except InputError:
        raise
    except Exception as exc:  # the item boundary: out of memory included
        from worker.stages import over_time_limit

        if over_time_limit(exc):  # not the file's fault: stages says so
            raise
        text = " ".join(str(exc).split())
        raise InputError(f"cannot featurise: {type(exc).__name__}: {text}"[:300]) from exc
