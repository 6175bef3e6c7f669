"""An audit bundle as one `.tar.gz` file: written byte-for-byte reproducibly and checked, read back safely.

Why (docs/protocol-decisions.md, "The bundle as one `.tar.gz`"): heartbeat-v1.md §6 defines the
bundle as a directory of files and is silent on how it travels or is kept. A month of one agent
polling 50 instances is ~400 MB of JWS text, and consecutive heartbeats repeat most of their
bytes, so gzip keeps ~1/40 of it (bench/bench_prune.py). The archive holds the directory's files
unchanged under one top directory, so `tar -xzf` gives back the §6 layout and any auditor's tool
reads it; `tr7-audit` and `tr7-collector unprune` also read the archive as it is.
"""

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from audit import bundle as B
from protocol.keys import sync_dir

SUFFIX = ".tar.gz"
LEVEL = 6  # gzip's default: 1/42 of a steady month at ~270 MB/s; 9: 1/44, 7% slower; 1: 1/25, 2x faster
_CHUNK = 1 << 20
# What reading a damaged archive raises, from its headers or from a member's stream
READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class ArchiveError(B.NotABundle):
    """An archive that cannot be read (truncated, not gzip/tar, a member that escapes its directory)."""


def archive_path(out: Path) -> Path:
    """Where a bundle meant for ``out`` goes as an archive: ``out`` + .tar.gz, unless it ends so already."""
    return out if out.name.endswith(SUFFIX) else out.with_name(out.name + SUFFIX)


def is_archive(path: Path) -> bool:
    """A regular file that reads as a tar archive (compressed or not), or is named as one: a
    download cut short or a file that is no tar at all, named .tar.gz, is a bundle archive that
    cannot be read (`archive.unreadable`, exit 1), not a usage error."""
    try:
        named = path.name.endswith((".tar.gz", ".tgz", ".tar"))
        return path.is_file() and (named or tarfile.is_tarfile(path))
    except OSError:
        return False


def pack(src: Path, dest: Path, top: str | None = None, replace: bool = False) -> Path:
    """Write the bundle directory ``src`` as the archive ``dest``; its members are under ``top``
    (default: dest's name without .tar.gz). Reproducible: members sorted, owner 0 unnamed, modes
    0644/0755, every time the manifest's `created` (gzip's own header: no name, time 0), so one
    bundle always makes the same bytes and its SHA-256 can be published. The archive is read back
    and each member compared (SHA-256) with its file before it takes its name, synced to disk:
    an archive that replaces the evidence must hold it. Refuses an existing ``dest`` unless
    ``replace``."""
    top = top or dest.name.removesuffix(SUFFIX)
    if not replace and dest.exists():
        raise B.BundleError(f"{dest} exists: write the archive under a new name")
    files = B.list_files(src)
    if not all(B.is_regular(src, rel) for rel in files):
        raise B.BundleError(f"{src} holds something other than regular files: not packed")
    mtime = _created(src)
    dirs = sorted({str(Path(rel).parent) for rel in files} - {"."})
    part = dest.with_name(f".{dest.name}.partial")
    digests: dict[str, str] = {}
    try:
        with part.open("wb") as raw:
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=LEVEL, mtime=0) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for name in ["", *dirs]:
                    tar.addfile(_info(f"{top}/{name}".rstrip("/"), tarfile.DIRTYPE, 0o755, 0, mtime))
                for rel in files:
                    path = src / rel
                    info = _info(f"{top}/{rel}", tarfile.REGTYPE, 0o644, path.stat().st_size, mtime)
                    with path.open("rb") as f:
                        reader = _Hashing(f)
                        tar.addfile(info, reader)
                    digests[rel] = reader.hash.hexdigest()
            raw.flush()
            os.fsync(raw.fileno())
        _check(part, top, digests)
        if replace:
            os.replace(part, dest)
        else:
            _rename_once(part, dest)
    finally:
        part.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the name too, not only the bytes
        sync_dir(dest.parent)
    return dest


def _rename_once(part: Path, dest: Path) -> None:
    """``part`` takes the name ``dest``, never over an existing file: a hard link fails if dest
    appeared meanwhile. Storage without hard links (some SMB mounts) gets a look, then a rename."""
    try:
        os.link(part, dest)
    except FileExistsError:
        raise B.BundleError(f"{dest} exists: write the archive under a new name") from None
    except OSError:
        if dest.exists():
            raise B.BundleError(f"{dest} exists: write the archive under a new name") from None
        os.rename(part, dest)
        return
    part.unlink()


def _parts(name: str) -> list[str]:
    """A member's name as path components, without empty ones and "." (`tar -czf -C DIR .`)."""
    return [p for p in name.split("/") if p not in ("", ".")]


def _info(name: str, kind: bytes, mode: int, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _created(src: Path) -> int:
    """The manifest's `created` as epoch seconds (0 when it has none): the members' time."""
    try:
        text = json.loads((src / B.MANIFEST).read_text(encoding="utf-8")).get("created", "")
        return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


class _Hashing(io.RawIOBase):
    """A file read through, hashing what tarfile copies into the archive."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        return data


def _check(path: Path, top: str, digests: dict[str, str]) -> None:
    """Every file, and only them, in the archive with the bytes that were read into it."""
    seen = {"/".join(parts[1:]): _sha256(f) for parts, f in _members(path) if parts[0] == top}
    if seen != digests:
        wrong = sorted(set(seen) ^ set(digests) | {r for r in seen if seen[r] != digests.get(r)})
        raise B.BundleError(f"{path} does not read back as written ({', '.join(wrong)}): not kept")


def _sha256(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    while block := f.read(_CHUNK):
        h.update(block)
    return h.hexdigest()


MAX_MEMBERS = 1_000  # members of any kind; a bundle holds about a dozen files and two directories


def _capped(tar: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's members, refused past MAX_MEMBERS: tarfile keeps every header it reads, and
    directories and empty files declare no size (200,000 of them, a 1 MB archive, took 800 MB of
    disk and as many inodes to extract before they were refused: a review)."""
    for count, info in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise ArchiveError(f"{path}: more than {MAX_MEMBERS:,} members; a bundle has about a "
                               "dozen files (heartbeat-v1.md §6)")
        yield info


def _members(path: Path) -> Generator[tuple[list[str], IO[bytes]], None, None]:
    """(name split at '/', stream) of each regular member, streamed: nothing is written to disk."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for info in _capped(tar, path):
                # a hard link reads as the file it names (tarfile finds it), as _extract does
                try:
                    f = tar.extractfile(info) if info.isfile() or info.islnk() else None
                except KeyError as exc:  # a hard link to a name the archive does not hold
                    raise ArchiveError(f"{path}: member {info.name!r} links to {info.linkname!r}, which "
                                       "it does not hold") from exc
                if f is not None:
                    yield _parts(info.name), f
    except READ_ERRORS as exc:
        raise ArchiveError(f"{path}: not a readable .tar.gz ({exc})") from exc


@contextlib.contextmanager
def member(path: Path, rel: str) -> Iterator[IO[bytes]]:
    """The bundle file ``rel`` of the archive at ``path``, streamed (heartbeats.jws for unprune):
    the member named so, or so under one top directory, as `tar -czf` of the directory makes."""
    want = rel.split("/")
    with contextlib.closing(_members(path)) as members:  # closes the tar when done
        for parts, f in members:
            if parts == want or parts[1:] == want:
                yield f
                return
    raise ArchiveError(f"{path} holds no {rel}")


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Path]:
    """The bundle directory ``path`` itself, or the archive ``path`` extracted into a temporary
    directory ($TMPDIR; removed afterwards): its directories and regular files only (_extract)."""
    if path.is_dir():
        yield path
        return
    if not is_archive(path):
        raise B.BundleError(f"{path} is neither a directory nor a bundle archive (.tar.gz)")
    tmp = Path(tempfile.mkdtemp(prefix="tr7-bundle-"))
    try:
        _extract(path, tmp)
        yield _root(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SPARE = 64 << 20  # bytes left free in $TMPDIR beyond what an extraction needs


def _extract(path: Path, tmp: Path) -> None:
    """Member by member (one pass over the gzip stream), directories and regular files only.

    Written out here rather than with tarfile's own extraction and its "data" filter (PEP 706):
    that filter is missing from Debian 12's Python 3.11.2, and a bundle holds nothing else, so
    anything else is refused outright: a name that is absolute or climbs out with `..`, a link
    (symbolic or hard), a device or FIFO, a name given twice. Extraction stops before the
    members' declared sizes would leave less than SPARE free: a big month (or a tar bomb) then
    says how much room it needs instead of filling the file system, and after MAX_MEMBERS members."""
    free, need = shutil.disk_usage(tmp).free, 0
    files: dict[tuple[str, ...], Path] = {}  # the regular files written, by their parts
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for info in _capped(tar, path):
                parts = _parts(info.name)
                if info.name.startswith("/") or ".." in parts:
                    raise ArchiveError(f"{path}: member {info.name!r} would land outside the bundle")
                if info.isdir():
                    tmp.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                    continue
                if info.islnk() and parts:
                    # GNU tar stores a second name of one inode as a hard link: an auditor's own
                    # `tar -czf` of a directory whose closed/ copies are hard links. Read as a copy
                    # of a regular file this archive already gave, never made a link on disk.
                    need = _copy_linked(path, tmp, info, parts, files, need, free)
                    continue
                if not info.isfile() or not parts:
                    raise ArchiveError(f"{path}: member {info.name!r} is not a regular file or a directory "
                                       "(a link, device or FIFO): a bundle holds none")
                need += info.size
                if need + SPARE > free:
                    raise B.BundleError(
                        f"{path}: extracting it needs more than the {free >> 20:,} MB free in {tmp.parent} "
                        f"(at least {-(-(need + SPARE) // (1 << 20)):,} MB: the members read so far and "
                        f"{SPARE >> 20} MB kept free): set TMPDIR to a larger file system, or extract it "
                        "yourself (tar -xzf) and verify the directory")
                target = tmp.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(info)
                try:
                    out = target.open("xb")  # "x": a name given twice is refused, never overwritten
                except FileExistsError as exc:
                    raise ArchiveError(f"{path}: member {'/'.join(parts)!r} is given twice (as "
                                       f"{info.name!r} the second time): which is the bundle's?") from exc
                with out:
                    if src is not None:
                        shutil.copyfileobj(src, out, _CHUNK)
                files[tuple(parts)] = target
    except (*READ_ERRORS, OSError) as exc:
        # tarfile lists every method it tried, a line each: what the operator needs is shorter
        why = "no readable tar archive: cut short, or no archive at all" if isinstance(
            exc, tarfile.ReadError) and "opened successfully" in str(exc) else str(exc)
        raise ArchiveError(f"{path}: cannot be extracted ({why})") from exc


def _copy_linked(path: Path, tmp: Path, info: tarfile.TarInfo, parts: list[str],
                 files: dict[tuple[str, ...], Path], need: int, free: int) -> int:
    """A hard-link member written as a copy of the regular file it names; the bytes needed so far."""
    source = files.get(tuple(_parts(info.linkname)))
    if info.linkname.startswith("/") or source is None:
        raise ArchiveError(f"{path}: member {info.name!r} links to {info.linkname!r}, which is not a "
                           "regular file given before it: a bundle holds no other link")
    need += source.stat().st_size
    if need + SPARE > free:
        raise B.BundleError(f"{path}: extracting it needs more than the {free >> 20:,} MB free in "
                            f"{tmp.parent}: set TMPDIR to a larger file system")
    target = tmp.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with source.open("rb") as src, target.open("xb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
    except FileExistsError as exc:
        raise ArchiveError(f"{path}: member {'/'.join(parts)!r} is given twice (as {info.name!r} the "
                           "second time): which is the bundle's?") from exc
    files[tuple(parts)] = target
    return need


def _root(tmp: Path, path: Path) -> Path:
    """The bundle inside what was extracted: its one top directory, or the files themselves.
    Without a manifest.json there, the archive is named (the temporary directory is gone by the
    time the report is read)."""
    if (tmp / B.MANIFEST).exists():
        return tmp
    entries = sorted(tmp.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        if (entries[0] / B.MANIFEST).exists():
            return entries[0]
        raise ArchiveError(f"{path}: its directory {entries[0].name}/ holds no {B.MANIFEST}: "
                           "not an audit bundle")
    if not entries:
        raise ArchiveError(f"{path}: holds no file: not an audit bundle")
    names = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise ArchiveError(f"{path}: {len(entries)} entries at its top ({names}) and no {B.MANIFEST} among "
                       "them: a bundle archive holds its files at the top or under one directory")
