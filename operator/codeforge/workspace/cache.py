"""The per-pod Git cache: the volume's layout, one bare repository per URL, fetching, eviction.

Layout under the cache directory (CODEFORGE_WORKSPACE_DIR, in pods the AgentPool's emptyDir):

    repos/<hash of url>.git   bare repository per URL: the cache; fetched into, never cloned twice
    work/<task>-<n>/          one worktree per running task (`git worktree add --detach`), removed after it
    private/                  the agent's private copy of an SSH key (ssh wants 0600)

Fetching: a commit the cache already holds needs no network at all (the warm path). Otherwise the agent asks
for exactly the commits it needs (protocol v2 serves any reachable commit by id) under a keep-ref, so the
next fetch negotiates from it and transfers only new objects; servers that refuse ids fall back to fetching
the branches, tags and refs/codeforge/*.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import re
import shutil
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from codeforge.workspace.errors import ErrorKind, WorkspaceError, git_error, redact
from codeforge.workspace.git import Git, GitFailed

#: Keep-refs of fetched commits per cached repository: enough haves for negotiation, few enough to be cheap.
MAX_KEEP_REFS: Final = 64
KEEP_PREFIX: Final = "refs/codeforge-cache/"
#: The agent's own share of the volume: the rest is headroom for worktrees before the kubelet's sizeLimit.
CACHE_SHARE: Final = 0.5

log = logging.getLogger("codeforge.workspace")
#: The caches of this process by token: their worktrees are in use, whoever sweeps the directory.
_LIVE: weakref.WeakValueDictionary[str, RepoCache] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class WorkspaceSettings:
    root: Path
    credentials_dir: Path | None = None
    author_name: str = "CodeForge"
    author_email: str = "codeforge@localhost"
    #: The volume's size (the AgentPool's cacheSizeLimit), None: unlimited.
    size_limit: int | None = None
    #: Longest a fetch or push may take.
    network_timeout: float = 600.0
    #: Keep one spare worktree per cached repository ready for the next task (costs one checkout's disk).
    spare_worktrees: bool = True


@dataclass
class WorkspaceStats:
    """What the cache did, for tests, benchmarks and logs."""

    inits: int = 0  # bare repositories created (a clone's worth of objects follows)
    fetches: int = 0  # fetches that went to the server
    cache_hits: int = 0  # checkouts whose commit was already cached (no network)
    pushes: int = 0


@dataclass
class RepoState:
    """This process's hold on one cached repository: its lock, and how many worktrees use it (no eviction)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class RepoCache:
    """The cached repositories of one agent process; the volume may be shared by processes (flock)."""

    def __init__(self, settings: WorkspaceSettings) -> None:
        self.settings = settings
        self.repos_dir = settings.root / "repos"
        self.work_dir = settings.root / "work"
        for directory in (self.repos_dir, self.work_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WorkspaceError(
                    ErrorKind.INVALID,
                    f"cannot create the workspace directory {str(directory)!r} ({exc.strerror}): "
                    "set CODEFORGE_WORKSPACE_DIR to a writable directory (in pods, the cache volume)",
                ) from None
        self.git = Git(settings.credentials_dir, private_dir=settings.root / "private")
        self.stats = WorkspaceStats()
        self._repos: dict[Path, RepoState] = {}
        self._counter = itertools.count(1)
        #: Called with a repository about to be evicted (the worktrees drop its spare checkout).
        self.before_evict: list[Callable[[Path], Awaitable[None]]] = []
        self._cleaned = False
        #: Worktree names start with "<pid>-<token>-": a restarted container's agent often gets the same
        #: pid (1) as the dead one, so the token tells this process's worktrees from its predecessor's.
        self._token = uuid.uuid4().hex[:8]
        _LIVE[self._token] = self

    def repo_path(self, url: str) -> Path:
        return self.repos_dir / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")

    def state(self, repo: Path) -> RepoState:
        return self._repos.setdefault(repo, RepoState())

    async def _startup_cleanup(self) -> None:
        """Worktrees left by a previous agent process in this volume (it was killed) are garbage."""
        if self._cleaned:
            return
        self._cleaned = True
        stale = [p for p in self.work_dir.iterdir() if self._stale(p.name)]
        if stale:
            await asyncio.to_thread(_remove_trees, stale)
            for repo in self.repos_dir.glob("*.git"):
                await self.git.run(["worktree", "prune"], cwd=repo, check=False)

    def _stale(self, name: str) -> bool:
        pid, _, rest = name.partition("-")
        if not pid.isdigit():
            return True
        if int(pid) == os.getpid():  # embedded mode: several agents (instances) share one process
            return rest.partition("-")[0] not in _LIVE
        return not _pid_alive(pid)

    @contextlib.asynccontextmanager
    async def locked(self, repo: Path) -> AsyncIterator[None]:
        """This process's tasks wait on an asyncio lock; other processes on the same volume on flock."""
        async with self.state(repo).lock:
            lock_path = self.repos_dir / (repo.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(0.05)
                yield
            finally:
                os.close(fd)

    async def ensure_repo(self, url: str) -> Path:
        repo = self.repo_path(url)
        if (repo / "HEAD").is_file():
            return repo
        temp = self.repos_dir / f".init-{os.getpid()}-{next(self._counter)}"
        await self.call(["init", "--quiet", "--bare", str(temp)], url=url, what="the cache", op="init")
        os.replace(temp, repo)  # atomic: a killed agent never leaves a half-made cache
        self.stats.inits += 1
        log.info("created the cache for %s", redact(url))
        return repo

    async def _has_commit(self, repo: Path, sha: str) -> bool:
        result = await self.git.run(["cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo, check=False)
        return result.returncode == 0

    async def ensure_commits(self, url: str, shas: list[str]) -> Path:
        """The cached repository for `url`, holding every commit in `shas` (fetching only what is missing)."""
        await self._startup_cleanup()
        repo = self.repo_path(url)
        async with self.locked(repo):
            repo = await self.ensure_repo(url)
            missing = [sha for sha in dict.fromkeys(shas) if not await self._has_commit(repo, sha)]
            if not missing:
                self.stats.cache_hits += 1
                with contextlib.suppress(OSError):
                    os.utime(repo)  # most recently used: evicted last
                return repo
            await self._fetch(repo, url, missing)
            still = [sha for sha in missing if not await self._has_commit(repo, sha)]
            if still:
                raise WorkspaceError(
                    ErrorKind.MISSING,
                    f"commit {still[0]} not found in {redact(url)}: the step that made it did not push it "
                    "(or it was deleted); rerun the workflow from its start",
                )
            await self._trim_keep_refs(repo)
            with contextlib.suppress(OSError):
                os.utime(repo)
        await self._check_size(repo, url)
        return repo

    async def _fetch(self, repo: Path, url: str, shas: list[str]) -> None:
        self.stats.fetches += 1
        started = time.perf_counter()
        specs = [f"+{sha}:{KEEP_PREFIX}{sha}" for sha in shas]
        base = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", url]
        try:
            await self.call(
                [*base, *specs], url=url, what=f"commit {shas[0]}", op="fetch", cwd=repo, net=True
            )
        except WorkspaceError as exc:
            if exc.kind is not ErrorKind.MISSING:
                raise
            # The server refuses commits by id (old protocol): take its branches and CodeForge refs instead.
            refspecs = [
                "+refs/heads/*:refs/codeforge-cache/heads/*",
                "+refs/codeforge/*:refs/codeforge-cache/cf/*",
            ]
            await self.call([*base, *refspecs], url=url, what="branches", op="fetch", cwd=repo, net=True)
        log.info(
            "fetched %d commit(s) from %s in %.0f ms",
            len(shas),
            redact(url),
            (time.perf_counter() - started) * 1000,
        )

    async def _trim_keep_refs(self, repo: Path) -> None:
        listing = await self.git.run(
            ["for-each-ref", "--sort=-committerdate", "--format=%(refname)", KEEP_PREFIX], cwd=repo
        )
        extra = [ref for ref in listing.stdout.split() if ref.count("/") == 2][MAX_KEEP_REFS:]
        if extra:
            commands = "".join(f"delete {ref}\n" for ref in extra).encode()
            await self.git.run(["update-ref", "--stdin"], cwd=repo, stdin=commands, check=False)

    async def _check_size(self, repo: Path, url: str) -> None:
        limit = self.settings.size_limit
        if limit is None:
            return
        budget = int(limit * CACHE_SHARE)
        size = await asyncio.to_thread(_tree_size, repo)
        if size <= budget:
            return
        await self._evict(keep=repo)
        if size > budget:
            raise WorkspaceError(
                ErrorKind.FULL,
                f"the cache of {redact(url)} needs {_mib(size)}, over the {_mib(budget)} the agent keeps for "
                f"caches (half of cacheSizeLimit {_mib(limit)}, the rest is for worktrees): raise the "
                "AgentPool's spec.workspace.cacheSizeLimit",
                retryable=False,
            )

    async def _evict(self, keep: Path | None = None) -> None:
        """Drop the cached repositories no task is using (all of them, oldest first: simple, and rare)."""
        for repo in sorted(self.repos_dir.glob("*.git"), key=_mtime):
            if repo == keep or self.state(repo).users:
                continue
            log.warning("evicting the cache %s to free space", repo.name)
            for hook in self.before_evict:
                await hook(repo)
            await asyncio.to_thread(shutil.rmtree, repo, True)

    def new_worktree_path(self, label: str) -> Path:
        """A fresh directory name under work/, marked as this process's (see `_stale`)."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label)[:60].strip("-.") or "task"
        return self.work_dir / f"{os.getpid()}-{self._token}-{next(self._counter)}-{safe}"

    def timed_out(self, op: str, url: str) -> WorkspaceError:
        """The error of a git network operation that outlived the timeout (retryable: a network problem)."""
        return WorkspaceError(
            ErrorKind.NETWORK,
            f"{op}: {redact(url)} did not answer within {self.settings.network_timeout:.0f}s",
        )

    async def call(
        self,
        args: list[str],
        *,
        url: str,
        what: str,
        op: str,
        cwd: Path | None = None,
        net: bool = False,
    ) -> str:
        """`git args` with its failure as a WorkspaceError naming `what` and `op` (a full volume evicts
        unused caches first); `net`: bounded by the network timeout."""
        try:
            result = await self.git.run(args, cwd=cwd, timeout=self.settings.network_timeout if net else None)
        except GitFailed as exc:
            error = git_error(exc.stderr, url=url, what=what, operation=op)
            if error.kind is ErrorKind.FULL:
                await self._evict()
            raise error from None
        except TimeoutError:
            raise self.timed_out(op, url) from None
        except OSError as exc:
            if exc.errno == 28:
                await self._evict()
                raise WorkspaceError(
                    ErrorKind.FULL, f"{op}: the workspace cache volume is full ({exc})"
                ) from None
            raise
        return result.stdout


def _pid_alive(text: str) -> bool:
    """Whether the process that made a worktree (its name starts with the pid) still runs on this host."""
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mtime(path: Path) -> float:
    """A path's mtime, 0 when it is gone: another process on the volume may evict it as we list them."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _tree_size(path: Path) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def _remove_trees(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"
