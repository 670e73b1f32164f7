"""codeforge.workspace against real git (file:// and the git http-backend server), without an agent."""

from __future__ import annotations

import asyncio
import gc
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from codeforge.api.task import TaskWorkspace
from codeforge.workspace import ErrorKind, Git, WorkspaceError, Workspaces, WorkspaceSettings, redact
from codeforge.workspace.errors import classify
from support.git_server import GitServer, commit_files, make_bare_repo


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != ".git")


def workspaces(root: Path, creds: Path | None = None, **kw: object) -> Workspaces:
    return Workspaces(WorkspaceSettings(root=root, credentials_dir=creds, **kw))  # type: ignore[arg-type]


async def test_spare_worktree_is_moved_to_the_next_base_exactly(tmp_path: Path) -> None:
    bare = tmp_path / "r.git"
    base = make_bare_repo(bare, {"keep.txt": "keep\n", "old.txt": "old\n"})
    url = f"file://{bare}"
    ws = workspaces(tmp_path / "cache")

    async def edit(path: Path) -> tuple[object, str | None]:
        (path / "added.txt").write_text("added\n")
        (path / "old.txt").unlink()
        (path / "ignored.log").write_text("junk\n")
        return None, "edit"

    first, _ = await ws.run(
        TaskWorkspace(url=url, base=base, push_ref="refs/codeforge/w/s/v1/p0"), handler=edit
    )
    await ws.settle()
    spares = list((tmp_path / "cache" / "work").glob("*-spare"))
    assert len(spares) == 1

    seen: dict[str, object] = {}

    async def look(path: Path) -> tuple[object, str | None]:
        seen["path"] = path
        seen["files"] = listing(path)
        return None, None

    second, _ = await ws.run(TaskWorkspace(url=url, base=base), handler=look)
    assert seen["path"] == spares[0], "the spare was used"
    assert seen["files"] == ["keep.txt", "old.txt"], "the spare holds exactly the base, nothing of task 1"
    assert second["changed"] is False
    assert first["files"] == ["added.txt", "ignored.log", "old.txt"]
    assert ws.stats.inits == 1
    assert ws.stats.fetches == 1
    await ws.aclose()
    assert list((tmp_path / "cache" / "work").iterdir()) == []


async def test_a_new_process_removes_worktrees_of_a_dead_one_even_with_the_same_pid(tmp_path: Path) -> None:
    bare = tmp_path / "r.git"
    base = make_bare_repo(bare, {"a": "1\n"})
    url = f"file://{bare}"
    cache = tmp_path / "cache"
    # No spares: a background task would keep the "dead" instance referenced.
    dead = workspaces(cache, spare_worktrees=False)
    checkout = await dead.prepare(url, base)
    alive = workspaces(cache, spare_worktrees=False)  # another agent of this process (embedded mode)
    await alive.prepare(url, base)
    assert checkout.path.exists()
    del dead  # never released: the process "dies" here
    gc.collect()
    reborn = workspaces(cache, spare_worktrees=False)  # same pid, as a restarted container's PID 1 would have
    again = await reborn.prepare(url, base)
    assert not checkout.path.exists()
    assert again.path.exists()
    assert reborn.stats.inits == 0, "the cache survived the restart"
    await alive.aclose()
    await reborn.aclose()


async def test_token_credentials_and_redaction(tmp_path: Path) -> None:
    with GitServer(tmp_path / "srv", username="x-access-token", password="tok-123-secret") as server:
        base = make_bare_repo(server.root / "r.git", {"a": "1\n"})
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "token").write_text("tok-123-secret\n")
        ws = workspaces(tmp_path / "cache", creds)
        assert await ws.resolve(server.url("r.git"), "main") == base
        assert "tok-123-secret" not in repr(ws.git.env), "the token never enters the agent's environment"
        (creds / "token").write_text("wrong\n")
        with pytest.raises(WorkspaceError) as info:
            await ws.resolve(server.url("r.git"), "main")
        assert info.value.kind is ErrorKind.AUTH
        assert info.value.retryable is False
        await ws.aclose()


async def test_fetch_brings_only_new_objects(tmp_path: Path) -> None:
    with GitServer(tmp_path / "srv") as server:
        bare = server.root / "r.git"
        make_bare_repo(bare, {f"f{i}": os.urandom(50_000) for i in range(20)})
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "username").write_text(server.username)
        (creds / "password").write_text(server.password)
        ws = workspaces(tmp_path / "cache", creds, spare_worktrees=False)
        url = server.url("r.git")
        first = commit_files(bare, {"small": "1\n"})
        await ws.ensure_commits(url, [first])
        cloned = sum(r.bytes_out for r in server.upload_packs("r.git"))
        second = commit_files(bare, {"small": "2\n"})
        await ws.ensure_commits(url, [second])
        fetched = sum(r.bytes_out for r in server.upload_packs("r.git")) - cloned
        assert 0 < fetched < 5000 < cloned
        assert ws.stats.inits == 1
        await ws.aclose()


def test_ssh_key_is_copied_private_and_used_with_known_hosts(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ssh-privatekey").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
    (creds / "ssh-privatekey").chmod(0o644)
    (creds / "known_hosts").write_text("git.example.com ssh-ed25519 AAAA\n")
    git = Git(creds, private_dir=tmp_path / "private")
    command = git.env["GIT_SSH_COMMAND"]
    copy = tmp_path / "private" / "ssh-privatekey"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert f"-i {copy}" in command
    assert "StrictHostKeyChecking=yes" in command
    assert f"UserKnownHostsFile={creds / 'known_hosts'}" in command
    assert "BatchMode=yes" in command


def test_missing_credentials_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="mount the Secret"):
        Git(tmp_path / "nope")


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("fatal: Authentication failed for 'https://h/r.git/'", ErrorKind.AUTH),
        ("fatal: unable to access 'https://h/': Could not resolve host: h", ErrorKind.HOST),
        ("fatal: unable to access 'http://127.0.0.1:1/': Failed to connect to 127.0.0.1", ErrorKind.NETWORK),
        (" ! [remote rejected] main -> main (pre-receive hook declined)", ErrorKind.REJECTED),
        ("fatal: couldn't find remote ref refs/heads/nope", ErrorKind.MISSING),
        ("error: unable to write file: No space left on device", ErrorKind.FULL),
        ("fatal: repository 'https://h/r.git/' not found", ErrorKind.REPOSITORY),
        ("remote: Repository not found.", ErrorKind.REPOSITORY),
    ],
)
def test_git_errors_are_classified(stderr: str, kind: ErrorKind) -> None:
    assert classify(stderr) is kind


def test_redact_drops_userinfo() -> None:
    assert (
        redact("fatal: https://bob:pw@h/r.git and ssh://git@h/x")
        == "fatal: https://***@h/r.git and ssh://***@h/x"
    )


TEARDOWN = """
import asyncio, sys
from pathlib import Path
from codeforge.workspace import Workspaces, WorkspaceSettings

async def main() -> None:
    ws = Workspaces(WorkspaceSettings(root=Path(sys.argv[1])))
    await ws.prepare(sys.argv[2], sys.argv[3])  # starts a spare; asyncio.run cancels it at once

asyncio.run(main())
print("closed")
"""


def test_an_event_loop_closing_mid_spare_does_not_hang(tmp_path: Path) -> None:
    bare = tmp_path / "r.git"
    base = make_bare_repo(bare, {"a": "1\n"})
    done = subprocess.run(
        [sys.executable, "-c", TEARDOWN, str(tmp_path / "cache"), f"file://{bare}", base],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "closed", done.stderr


async def test_a_worktree_add_meeting_one_half_written_by_a_concurrent_add_is_tried_again(
    tmp_path: Path,
) -> None:
    bare = tmp_path / "r.git"
    base = make_bare_repo(bare, {"a.txt": "a\n"})
    url = f"file://{bare}"
    ws = workspaces(tmp_path / "cache", spare_worktrees=False)

    async def nothing(path: Path) -> tuple[object, str | None]:
        return None, None

    await ws.run(TaskWorkspace(url=url, base=base), handler=nothing)  # the cache's repository exists
    await ws.settle()
    (repo,) = (tmp_path / "cache" / "repos").glob("*.git")
    # Another task's `git worktree add` caught midway: its admin directory made, commondir still empty. git
    # dies on it ("failed to read .../commondir: Success") until that add writes the file.
    half = repo / "worktrees" / "half"
    half.mkdir(parents=True)
    (half / "gitdir").write_text(str(tmp_path / "elsewhere" / ".git") + "\n")
    (half / "HEAD").write_text(base + "\n")
    (half / "commondir").write_text("")

    async def the_other_add_finishes() -> None:
        await asyncio.sleep(0.03)
        (half / "commondir").write_text("../..\n")

    seen: dict[str, list[str]] = {}

    async def look(path: Path) -> tuple[object, str | None]:
        seen["files"] = listing(path)
        return None, None

    finishing = asyncio.create_task(the_other_add_finishes())
    await ws.run(TaskWorkspace(url=url, base=base), handler=look)
    await finishing
    assert seen["files"] == ["a.txt"]
    await ws.aclose()
