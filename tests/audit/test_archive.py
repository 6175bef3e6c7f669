"""A bundle as one .tar.gz (audit/archive.py): reproducible, checked as written, verified as it is,
and read safely: a damaged or hostile archive fails verification by name and writes nothing outside."""

import hashlib
import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from audit import archive
from audit.archive import pack
from audit.bundle import BundleError
from audit.verify import verify_bundle

from .conftest import edit_lines


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pack_is_reproducible_and_verifies_as_it_is(pristine: Path, tmp_path: Path, cli) -> None:
    (tmp_path / "a").mkdir()
    a = pack(pristine, tmp_path / "a" / "2026-09.tar.gz")
    b = pack(pristine, tmp_path / "2026-09.tar.gz")
    assert _sha(a) == _sha(b)  # the same bundle: the same bytes (a hash to publish)
    with tarfile.open(b) as t:
        infos = t.getmembers()
    assert {i.name.split("/")[0] for i in infos} == {"2026-09"}
    assert all(i.uid == 0 and i.uname == "" and i.mode in (0o644, 0o755) for i in infos)
    files = {i.name.removeprefix("2026-09/") for i in infos if i.isfile()}
    assert files == {p.relative_to(pristine).as_posix() for p in pristine.rglob("*") if p.is_file()}
    assert b.stat().st_size * 4 < sum(p.stat().st_size for p in pristine.rglob("*") if p.is_file())

    res = cli("verify", str(b))
    assert res.returncode == 0 and f"{b}: " in res.stderr and "OK" in res.stderr, res.stdout + res.stderr
    assert not list(tmp_path.glob(".*partial"))
    shown = cli("show", str(b))
    assert shown.returncode == 0 and shown.stdout.startswith(f"bundle {b}: provider")


def test_an_auditors_own_tar_of_the_directory_verifies_too(pristine: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat.tar.gz"  # `tar -czf` of the files themselves, "./" names
    subprocess.run(["tar", "-czf", str(flat), "-C", str(pristine), "."], check=True)
    assert verify_bundle(flat, workers=1).ok


def test_a_tampered_archive_fails_as_the_directory_would(bundle: Path, tmp_path: Path, cli) -> None:
    edit_lines(bundle, "heartbeats.jws", lambda lines: lines[:-1])
    packed = pack(bundle, tmp_path / "t.tar.gz")
    by_dir, by_file = verify_bundle(bundle, workers=1), verify_bundle(packed, workers=1)
    assert not by_file.ok and [str(f) for f in by_file.errors] == [str(f) for f in by_dir.errors]
    assert cli("verify", str(packed)).returncode == 1


def test_a_damaged_or_hostile_archive_fails_by_name_and_writes_nothing_outside(
    pristine: Path, tmp_path: Path, cli,
) -> None:
    good = pack(pristine, tmp_path / "good.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    res = cli("verify", str(cut))
    assert res.returncode == 1 and "archive.unreadable" in res.stdout, res.stdout + res.stderr

    evil = tmp_path / "evil.tar.gz"  # a member that climbs out of the extraction directory
    with tarfile.open(evil, "w:gz") as t:
        data = b"owned\n"
        info = tarfile.TarInfo("../../../../../../../../tmp/tr7-escaped-" + tmp_path.name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    res = cli("verify", str(evil))
    assert res.returncode == 1 and "archive.unreadable" in res.stdout and "outside the bundle" in res.stdout
    assert not Path("/tmp/tr7-escaped-" + tmp_path.name).exists()

    linked = tmp_path / "linked.tar.gz"  # the bundle's files, and a link to a file elsewhere
    with tarfile.open(linked, "w:gz") as t:
        t.add(pristine, arcname="b")
        info = tarfile.TarInfo("b/closed/usage.json.bak")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    res = cli("verify", str(linked))
    assert res.returncode == 1 and "not a regular file or a directory" in res.stdout, res.stdout

    dirs = tmp_path / "dirs.tar.gz"  # the bundle, then directories that declare no size (a review)
    with tarfile.open(dirs, "w:gz") as t:
        t.add(pristine, arcname="b")
        for i in range(archive.MAX_MEMBERS):
            info = tarfile.TarInfo(f"b/d{i}")
            info.type = tarfile.DIRTYPE
            t.addfile(info)
    res = cli("verify", str(dirs))
    assert res.returncode == 1 and "archive.unreadable" in res.stdout
    assert "more than 1,000 members" in res.stdout

    other = tmp_path / "notes.txt"
    other.write_text("not a bundle\n")
    res = cli("verify", str(other))
    assert res.returncode == 2 and "neither a directory nor a bundle archive" in res.stderr

    # named as an archive, it is one that cannot be read: a download cut short, or a wrong file
    for name, content in (("empty.tar.gz", b""), ("junk.tar.gz", b"\x00not gzip" * 50)):
        bad = tmp_path / name
        bad.write_bytes(content)
        res = cli("verify", "--quiet", str(bad))
        assert res.returncode == 1 and "archive.unreadable" in res.stdout, res.stdout + res.stderr
        assert "no readable tar archive" in res.stdout
        shown = cli("show", str(bad))
        assert shown.returncode == 1 and "Traceback" not in shown.stderr


def test_an_archive_of_another_shape_names_itself_and_what_it_holds(pristine: Path, tmp_path: Path,
                                                                     cli) -> None:
    """The report names the archive and its shape, not the temporary directory (gone by then)."""
    def made(name: str, members: list[tuple[str, Path]]) -> str:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as t:
            for arcname, src in members:
                t.add(src, arcname=arcname)
        res = cli("verify", "--quiet", str(path))
        assert res.returncode == 1 and "tr7-bundle-" not in res.stdout + res.stderr, res.stdout
        return res.stdout

    (tmp_path / "empty").mkdir()
    assert "2 entries at its top (bundle, other) and no manifest.json" in made(
        "two.tar.gz", [("bundle", pristine), ("other", tmp_path / "empty")])
    one = made("one.tar.gz", [("other", tmp_path / "empty")])
    assert "its directory other/ holds no manifest.json" in one
    again = ("bundle/./heartbeats.jws", pristine / "heartbeats.jws")
    twice = made("twice.tar.gz", [("bundle", pristine), again])
    assert "member 'bundle/heartbeats.jws' is given twice" in twice


def test_pack_keeps_nothing_that_does_not_read_back(pristine: Path, tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "x.tar.gz"
    monkeypatch.setattr(archive, "_sha256", lambda f: "0" * 64)  # what a bad disk would read back
    with pytest.raises(BundleError, match="does not read back as written"):
        pack(pristine, dest)
    assert list(tmp_path.iterdir()) == []  # neither the archive nor its partial file
    monkeypatch.undo()
    pack(pristine, dest)
    with pytest.raises(BundleError, match="exists"):
        pack(pristine, dest)
    shutil.copy(dest, tmp_path / "y.tar.gz")
    assert pack(pristine, dest, replace=True) == dest


def test_an_archive_too_big_for_tmpdir_says_how_much_room_it_needs(pristine: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    packed = pack(pristine, tmp_path / "b.tar.gz")
    real = shutil.disk_usage

    def small(path):  # a $TMPDIR with 1 MB left beyond the spare room
        return real(path)._replace(free=archive.SPARE + (1 << 20))

    monkeypatch.setattr(archive.shutil, "disk_usage", small)
    with pytest.raises(BundleError, match="set TMPDIR to a larger file system") as e:
        verify_bundle(packed, workers=1)
    assert isinstance(e.value, BundleError) and not isinstance(e.value, archive.ArchiveError)  # exit 2
    # how much: more than the free 65 MB (it said "at least 0 MB", the members' sum before the spare)
    need = int(re.search(r"at least ([\d,]+) MB", str(e.value)).group(1).replace(",", ""))
    assert need > (archive.SPARE + (1 << 20)) >> 20
    monkeypatch.undo()
    assert verify_bundle(packed, workers=1).ok


def test_pack_on_storage_without_hard_links(pristine: Path, tmp_path: Path, monkeypatch) -> None:
    """Archive storage on a mount that refuses hard links (some SMB shares): a look, then a rename."""
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(archive.os, "link", no_links)
    dest = pack(pristine, tmp_path / "x.tar.gz")
    assert verify_bundle(dest, workers=1).ok and sorted(p.name for p in tmp_path.iterdir()) == ["x.tar.gz"]
    with pytest.raises(BundleError, match="exists"):
        pack(pristine, dest)


def test_a_streamed_member_is_refused_behind_too_many_members(tmp_path: Path) -> None:
    """`unprune --from OUT.tar.gz` streams heartbeats.jws out of the archive; tarfile keeps every
    header it reads, so members that declare no size before it are counted as extraction counts them."""
    many = tmp_path / "many.tar.gz"
    with tarfile.open(many, "w:gz") as t:
        for i in range(archive.MAX_MEMBERS + 1):
            info = tarfile.TarInfo(f"b/d{i}")
            info.type = tarfile.DIRTYPE
            t.addfile(info)
        data = b"line\n"
        info = tarfile.TarInfo("b/heartbeats.jws")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(archive.ArchiveError, match="more than 1,000 members"), \
            archive.member(many, "heartbeats.jws") as f:
        f.read()
    few = tmp_path / "few.tar.gz"  # the same member behind fewer is read as it is
    with tarfile.open(few, "w:gz") as t:
        info = tarfile.TarInfo("b/heartbeats.jws")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with archive.member(few, "heartbeats.jws") as f:
        assert f.read() == data
