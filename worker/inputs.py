"""Input paths -> the files to score, listed and read so that every path ends somewhere.

Why a walk of its own: `os.walk` swallows listing errors and does not follow symlinked folders,
so an unreadable or linked folder vanished without a line. Why `stat` before reading: a FIFO
named x.wav blocks a read for ever, and /dev/zero or a multi-GB file fills memory before any
check; only regular files up to SCORER_MAX_FILE_MB are read. A path is then either read (its
sha256 and bytes), unreadable (a `failed` row with the reason), or `Skipped` (one line, no row:
it is not a file at all, or it is gone). A file larger than the caller's `keep_bytes` is hashed
in blocks and not kept: it travels as a `FileRef` and its decoder reads it from the path in blocks
(pipeline/blocks.py), so a 2-hour file never sits whole in memory or in a message.

Symlinked folders are followed, each real folder once (by device and inode): a library often
links its albums in, and a link that loops back or points at a folder already listed is
reported as skipped instead of being walked again.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scorer.errors import InputError, ScorerError
from scorer.manifest import AUDIO_SUFFIXES

MB = 1 << 20


@dataclass(frozen=True)
class Skipped:
    """A path that gets no row: not a regular file, a loop, or gone before it was read."""

    path: Path
    reason: str


@dataclass(frozen=True)
class FileRef:
    """A file's content by its path: too large to hold or send whole (over `keep_bytes`)."""

    path: str
    size: int


Content = bytes | FileRef
"""A file's bytes, or where to read them (the reader checks them against the sha first)."""

Read = tuple[str, Content | None, str | None]
"""(sha256, content or None, why it could not be read or None)"""

HASH_BLOCK = 1 << 20


def size_of(content: Content) -> int:
    return content.size if isinstance(content, FileRef) else len(content)


def absolute(path: Path) -> Path:
    """The path as stored: absolute, normalised, symlinks kept (the name the user gave)."""
    return Path(os.path.abspath(path))


def why(exc: OSError) -> str:
    """One line for an OSError, without the path (the caller prints the path)."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return exc.strerror or type(exc).__name__


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def not_regular(mode: int) -> str:
    return f"not a regular file ({kind_of(mode)})"


def is_audio_name(name: str) -> bool:
    return Path(name).suffix.lower() in AUDIO_SUFFIXES


def iter_inputs(roots: Sequence[Path]) -> Iterator[Path | Skipped]:
    """Audio files under `roots` (absolute; files named directly are taken whatever their
    suffix), sorted per folder, lazily; a folder that cannot be listed, a symlink loop, a
    second link to a listed folder or a non-regular file named like audio comes as `Skipped`.

    Raises:
        ScorerError: a root that does not exist (a typo on the command line stops the run).
    """
    seen: set[tuple[int, int]] = set()
    for given in roots:
        root = absolute(given)
        try:
            st = os.stat(root)
        except FileNotFoundError as exc:
            if not os.path.islink(root):
                raise ScorerError(f"{given}: no such file or folder") from exc
            yield root  # a dangling link: the reader fails it with its reason
            continue
        except OSError as exc:
            yield Skipped(root, why(exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, st, seen)
        else:
            yield root


def _walk(folder: Path, st: os.stat_result, seen: set[tuple[int, int]]) -> Iterator[Path | Skipped]:
    key = (st.st_dev, st.st_ino)
    if key in seen:
        yield Skipped(folder, "folder already listed (a symlink loop or a second link to it)")
        return
    seen.add(key)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield Skipped(folder, f"cannot list folder: {why(exc)}")
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            est = os.stat(path)  # follows links: a linked folder is walked, a linked file read
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                yield Skipped(path, "symlink loop")
            elif is_audio_name(entry.name):
                yield path  # dangling link or no permission: a `failed` row with the reason
            continue
        if stat.S_ISDIR(est.st_mode):
            yield from _walk(path, est, seen)
        elif is_audio_name(entry.name):
            yield path if stat.S_ISREG(est.st_mode) else Skipped(path, not_regular(est.st_mode))


def unreadable_sha(path: Path) -> str:
    """A stand-in key for a file whose bytes cannot be read, so it still gets its `failed` row."""
    return hashlib.sha256(b"unreadable:" + str(path).encode("utf-8", "surrogateescape")).hexdigest()


def changed(before: os.stat_result, after: os.stat_result, n_read: int) -> bool:
    """Did the file change while it was read (size, mtime, or a read of another length)?"""
    return (
        n_read != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
    )


def read_input(path: Path, max_bytes: int, keep_bytes: int | None = None) -> Read | Skipped:
    """Stat, then read one input: only a regular file of at most `max_bytes` is read.

    Opened non-blocking (a FIFO cannot hang the run) and checked with fstat on the open file,
    so what is checked is what is read. A file over `keep_bytes` (None: no limit) is hashed in
    blocks and comes back as a `FileRef`. Never raises for anything the file can do.
    """
    try:
        os.lstat(path)
    except FileNotFoundError:
        return Skipped(path, "gone before it was read")
    except OSError as exc:
        return unreadable_sha(path), None, f"cannot read file: {why(exc)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return unreadable_sha(path), None, f"cannot read file: {why(exc)}"
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return Skipped(path, not_regular(before.st_mode))
        if before.st_size > max_bytes:
            return (
                unreadable_sha(path),
                None,
                (
                    f"too large: {before.st_size / MB:.4g} MB > {max_bytes / MB:g} MB limit "
                    "(SCORER_MAX_FILE_MB)"
                ),
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            if keep_bytes is not None and before.st_size > keep_bytes:
                digest, n_read = _hash_blocks(f)
                content: Content = FileRef(str(path), n_read)
            else:
                data = f.read(before.st_size + 1)  # one byte more: a file that grew shows it
                digest, n_read, content = hashlib.sha256(data).hexdigest(), len(data), data
        if changed(before, os.fstat(fd), n_read):
            return unreadable_sha(path), None, "changed while it was read; enqueue it again"
    except MemoryError:
        return unreadable_sha(path), None, "out of memory while reading the file"
    except OSError as exc:
        return unreadable_sha(path), None, f"cannot read file: {why(exc)}"
    finally:
        os.close(fd)
    return digest, content, None


def _hash_blocks(f: io.BufferedReader) -> tuple[str, int]:
    """(sha256, bytes read) of an open file, a block at a time."""
    h, n = hashlib.sha256(), 0
    while block := f.read(HASH_BLOCK):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n


def verified(ref: FileRef, sha: str, max_bytes: int) -> os.stat_result:
    """Check that `ref`'s path still holds the content `sha` (hashed in blocks); returns its
    stat, for `still_same` after decoding. Raises InputError with the reason otherwise."""
    got = read_input(Path(ref.path), max_bytes, keep_bytes=0)
    if isinstance(got, Skipped):
        raise InputError(f"{ref.path}: {got.reason}")
    digest, _, error = got
    if error is not None:
        raise InputError(f"{ref.path}: {error}")
    if digest != sha:
        raise InputError(
            f"{ref.path} no longer holds the content that was enqueued (sha256 {digest[:12]} "
            f"!= {sha[:12]}); enqueue it again"
        )
    return os.stat(ref.path)


def still_same(path: str, before: os.stat_result) -> bool:
    """Is the file at `path` the one stat'ed `before` (size and mtime)?"""
    try:
        after = os.stat(path)
    except OSError:
        return False
    return after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns


@dataclass(frozen=True)
class Found:
    """Where a known content was read again (reconcile, recovery of a crashed run)."""

    path: Path | None
    data: Content | None
    reason: str | None = None  # why not found
    changed: bool = False  # True: reachable, but no path holds these bytes any more


def find_source(
    paths: Sequence[str], sha: str, max_bytes: int, keep_bytes: int | None = None
) -> Found:
    """Read `sha`'s bytes again from the first of `paths` that still holds them (a `FileRef`
    over `keep_bytes`).

    A path that cannot be reached (a mount away, another host's path, no permission) says
    nothing about the content, so only when a path was read and every read path held other
    bytes is the content gone (`changed`)."""
    reasons: list[str] = []
    read_any = False
    for p in paths:
        got = read_input(Path(p), max_bytes, keep_bytes)
        if isinstance(got, Skipped):
            reasons.append(f"{p}: {got.reason}")
            continue
        digest, data, error = got
        if error is not None:
            reasons.append(f"{p}: {error}")
        elif digest == sha:
            return Found(Path(p), data)
        else:
            read_any = True
    if read_any and len(reasons) == 0:
        return Found(None, None, "source file changed since it was enqueued", changed=True)
    return Found(None, None, "; ".join(reasons) or "no source path known")
