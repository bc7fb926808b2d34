"""FileSink on real directories: atomic, complete files; disk failures (a full tmpfs, a read-only one,
a vanished directory) become outcomes; file:// URLs; make_sink."""

from __future__ import annotations

import contextlib
import errno
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.push.client import FHIRClient
from node.push.file_sink import FileSink, directory_from_url, disk_outcome, make_sink
from node.push.outcome import OutcomeKind
from node.settings import CentralSection


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `where` (skips the test when this process may not mount)."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                                 capture_output=True, text=True, timeout=30)
    except OSError as exc:
        pytest.skip(f"cannot run mount: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def bundle(size: int = 200) -> bytes:
    head = b'{"resourceType":"Bundle","type":"transaction","entry":[],"padding":"'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


async def test_a_bundle_is_written_as_batch_id_json(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "outbox")
    data = bundle()

    outcome = await sink.post_transaction(data, batch_id="batch-000007")

    assert outcome.kind is OutcomeKind.OK
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == ["batch-000007.json"]
    assert (tmp_path / "outbox" / "batch-000007.json").read_bytes() == data


async def test_writing_a_batch_again_replaces_its_file(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    await sink.post_transaction(bundle(300), batch_id="b1")
    assert (await sink.post_transaction(bundle(100), batch_id="b1")).ok
    assert [p.name for p in tmp_path.iterdir()] == ["b1.json"]
    assert (tmp_path / "b1.json").read_bytes() == bundle(100)


async def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    data = bundle(8 * 1024 * 1024)
    stop = threading.Event()
    partial: list[str] = []
    temp_names: set[str] = set()

    def watch() -> None:
        while not stop.is_set():
            for path in tmp_path.iterdir():
                if path.suffix == ".json":
                    with contextlib.suppress(FileNotFoundError):
                        if path.stat().st_size != len(data):
                            partial.append(path.name)
                else:
                    temp_names.add(path.name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for n in range(4):
            assert (await sink.post_transaction(data, batch_id=f"big-{n}")).ok
    finally:
        stop.set()
        watcher.join()

    assert partial == []
    assert all(name.startswith(".big-") and name.endswith(".tmp") for name in temp_names)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"big-{n}.json" for n in range(4)]


async def test_a_full_disk_is_transient_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        sink = FileSink(mnt / "outbox")

        outcome = await sink.post_transaction(bundle(2 * 1024 * 1024), batch_id="too-big")

        assert outcome.kind is OutcomeKind.TRANSIENT and "ENOSPC" in outcome.reason
        assert list((mnt / "outbox").iterdir()) == []  # neither the final name nor a temp file
        assert (await sink.post_transaction(bundle(), batch_id="small")).ok  # the space is there again


async def test_a_read_only_file_system_is_misconfigured(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        sink = FileSink(mnt)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True, timeout=30)

        outcome = await sink.post_transaction(bundle(), batch_id="b1")

        assert outcome.kind is OutcomeKind.MISCONFIGURED and "EROFS" in outcome.reason


async def test_a_vanished_directory_is_misconfigured_not_recreated(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "outbox")
    (tmp_path / "outbox").rmdir()  # e.g. an unmounted volume: creating it again would write to the wrong disk

    outcome = await sink.post_transaction(bundle(), batch_id="b1")

    assert outcome.kind is OutcomeKind.MISCONFIGURED and "ENOENT" in outcome.reason
    assert not (tmp_path / "outbox").exists()


@pytest.mark.parametrize(("code", "kind"), [
    (errno.ENOSPC, OutcomeKind.TRANSIENT), (errno.EIO, OutcomeKind.TRANSIENT), (errno.EDQUOT, OutcomeKind.TRANSIENT),
    (errno.EACCES, OutcomeKind.MISCONFIGURED), (errno.EROFS, OutcomeKind.MISCONFIGURED)])
def test_disk_errors_are_classified(code: int, kind: OutcomeKind) -> None:
    assert disk_outcome(OSError(code, "test")).kind is kind


async def test_invalid_batch_ids_are_refused(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    for batch_id in ("../escape", ".hidden", "", "a/b", "x" * 129):
        with pytest.raises(ValueError):
            await sink.post_transaction(bundle(), batch_id=batch_id)
    assert list(tmp_path.iterdir()) == []


def test_file_urls_are_paths_after_the_scheme() -> None:
    assert directory_from_url("file:///var/lib/edge-node/outbox") == Path("/var/lib/edge-node/outbox")
    assert directory_from_url("file://var/outbox") == Path("var/outbox")
    for bad in ("file://", "https://central.example/fhir"):
        with pytest.raises(ConfigError):
            directory_from_url(bad)


def test_a_directory_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="outbox"):
        FileSink(tmp_path / "a-file" / "outbox")


async def test_make_sink_picks_the_sink_the_url_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = make_sink(CentralSection())  # the embedded default: file://var/outbox
    assert isinstance(default, FileSink) and default.directory.resolve() == tmp_path / "var" / "outbox"
    assert (await default.post_transaction(bundle(), batch_id="b1")).ok
    assert (tmp_path / "var" / "outbox" / "b1.json").exists()

    absolute = make_sink(CentralSection(url=f"file://{tmp_path}/abs"))
    assert isinstance(absolute, FileSink) and absolute.directory == tmp_path / "abs"

    client = make_sink(CentralSection(url="https://central.example/fhir"))
    assert isinstance(client, FHIRClient)
    await client.close()
