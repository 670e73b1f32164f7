"""The per-pod Git cache and the workspace actions (checkout, resolve, merge, publish, cleanup).

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
from typing import Any, Final

from codeforge.api.task import COMMIT_RE, TaskWorkspace, WorkspaceAction, unchanged_workspace
from codeforge.workspace.errors import ErrorKind, WorkspaceError, git_error, redact
from codeforge.workspace.git import Git, GitFailed

MAX_FILES: Final = 1000
MAX_CONFLICT_NAMES: Final = 20
#: Keep-refs of fetched commits per cached repository: enough haves for negotiation, few enough to be cheap.
MAX_KEEP_REFS: Final = 64
KEEP_PREFIX: Final = "refs/codeforge-cache/"
#: A cleanup deletes at most this many refs (a run has far fewer), in pushes of CLEANUP_CHUNK refs.
MAX_CLEANUP_REFS: Final = 10_000
CLEANUP_CHUNK: Final = 200
#: `git worktree add` tries when it races with the removal of the empty worktrees/ directory.
WORKTREE_ADD_TRIES: Final = 3
#: The agent's own share of the volume: the rest is headroom for worktrees before the kubelet's sizeLimit.
CACHE_SHARE: Final = 0.5
_SHORTSTAT_RE: Final = re.compile(
    r"(\d+) files? changed(?:, (\d+) insertions?\(\+\))?(?:, (\d+) deletions?\(-\))?"
)

log = logging.getLogger("codeforge.workspace")
#: The instances of this process by token: their worktrees are in use, whoever sweeps the directory.
_LIVE: weakref.WeakValueDictionary[str, Workspaces] = weakref.WeakValueDictionary()


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


@dataclass(frozen=True)
class Checkout:
    url: str
    repo: Path
    path: Path
    base: str


@dataclass
class _RepoState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Workspaces:
    """One per agent process. Safe for concurrent tasks; the cache dir may be shared by processes."""

    def __init__(self, settings: WorkspaceSettings) -> None:
        self.settings = settings
        self.root = settings.root
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
        self._repos: dict[Path, _RepoState] = {}
        self._counter = itertools.count(1)
        self._removals: set[asyncio.Task[Any]] = set()
        self._spares: dict[Path, asyncio.Task[Path | None]] = {}
        self._closing = False
        self._cleaned = False
        #: Worktree names start with "<pid>-<token>-": a restarted container's agent often gets the same
        #: pid (1) as the dead one, so the token tells this process's worktrees from its predecessor's.
        self._token = uuid.uuid4().hex[:8]
        _LIVE[self._token] = self

    # ---- the cache ----

    def repo_path(self, url: str) -> Path:
        return self.repos_dir / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")

    def _state(self, repo: Path) -> _RepoState:
        return self._repos.setdefault(repo, _RepoState())

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
    async def _locked(self, repo: Path) -> AsyncIterator[None]:
        """This process's tasks wait on an asyncio lock; other processes on the same volume on flock."""
        async with self._state(repo).lock:
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

    async def _ensure_repo(self, url: str) -> Path:
        repo = self.repo_path(url)
        if (repo / "HEAD").is_file():
            return repo
        temp = self.repos_dir / f".init-{os.getpid()}-{next(self._counter)}"
        await self._git(["init", "--quiet", "--bare", str(temp)], url=url, what="the cache", op="init")
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
        async with self._locked(repo):
            repo = await self._ensure_repo(url)
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
            await self._git(
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
            await self._git([*base, *refspecs], url=url, what="branches", op="fetch", cwd=repo, net=True)
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
        for repo in sorted(self.repos_dir.glob("*.git"), key=lambda p: p.stat().st_mtime):
            if repo == keep or self._state(repo).users:
                continue
            log.warning("evicting the cache %s to free space", repo.name)
            await self._drop_spare(repo)
            await asyncio.to_thread(shutil.rmtree, repo, True)

    # ---- worktrees ----

    async def prepare(self, url: str, base: str, *, label: str = "task") -> Checkout:
        """A worktree at `base` that no handler has used, from the cache (fetching `base` only if missing).

        Checking out a large tree is slow (10,000 files, 100 MiB: seconds), so while a task runs the agent
        prepares a spare worktree of the repository in the background (`git worktree add --detach`, never
        handed to a handler before); the next task takes it and moves it to its base, which rewrites only
        the files that differ. Without a spare (first task, concurrent tasks) it adds a worktree directly.
        """
        repo = await self.ensure_commits(url, [base])
        self._state(repo).users += 1
        try:
            spare = await self._take_spare(repo, base)
            path = spare or self._new_path(label)
            if spare is None:
                try:
                    await self._add_worktree(repo, url, path, base)
                except BaseException:
                    await self._remove_path(repo, path)
                    raise
        except BaseException:
            self._state(repo).users -= 1
            raise
        self._start_spare(repo, base)  # ready by the time the next task comes, made while this one runs
        return Checkout(url, repo, path, base)

    async def _add_worktree(self, repo: Path, url: str, path: Path, base: str) -> None:
        for attempt in range(WORKTREE_ADD_TRIES):
            try:
                await self._git(
                    ["worktree", "add", "--quiet", "--detach", str(path), base],
                    url=url,
                    what=f"commit {base}",
                    op="checkout",
                    cwd=repo,
                )
                return
            except WorkspaceError as exc:
                # git removes the empty worktrees/ directory when the last worktree goes: an add racing with
                # that removal (another task's cleanup) fails once and succeeds when tried again.
                if "could not create directory of" not in str(exc) or attempt + 1 == WORKTREE_ADD_TRIES:
                    raise
                await self._remove_path(repo, path)

    def _new_path(self, label: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label)[:60].strip("-.") or "task"
        return self.work_dir / f"{os.getpid()}-{self._token}-{next(self._counter)}-{safe}"

    async def _take_spare(self, repo: Path, base: str) -> Path | None:
        job = self._spares.pop(repo, None)
        if job is None or job.cancelled():
            return None
        try:
            path = await asyncio.shield(job)
        except Exception:  # the spare could not be made: add a worktree the slow way
            return None
        if path is None:
            return None
        moved = await self.git.run(
            ["checkout", "--quiet", "--detach", "--force", base], cwd=path, check=False
        )
        if moved.returncode == 0:
            return path
        await self._remove_path(repo, path)
        return None

    async def _make_spare(self, repo: Path, commit: str) -> Path | None:
        return await asyncio.to_thread(self._make_spare_blocking, repo, commit, self._new_path("spare"))

    def _make_spare_blocking(self, repo: Path, commit: str, path: Path) -> Path | None:
        # In a thread (see Git.run_blocking): a cancelled agent waits for it instead of hanging its loop.
        result = self.git.run_blocking(
            ["worktree", "add", "--quiet", "--detach", str(path), commit], cwd=repo
        )
        if result.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            self.git.run_blocking(["worktree", "prune"], cwd=repo)
            return None
        # Files written in the same second as the index are "racily clean": git would re-read all of them on
        # the next checkout. Refreshing the index a second later records their final stat data once.
        time.sleep(1.1)
        self.git.run_blocking(["update-index", "-q", "--refresh"], cwd=path)
        return path

    def _start_spare(self, repo: Path, commit: str) -> None:
        if self.settings.spare_worktrees and repo not in self._spares and not self._closing:
            spare = asyncio.create_task(self._make_spare(repo, commit))
            self._spares[repo] = spare
            self._track(spare)

    def release(self, checkout: Checkout, next_commit: str | None = None) -> None:
        """Remove the worktree in the background (the cache stays); see `aclose`. If no spare is on its
        way (concurrent tasks took it), start one at `next_commit`, where the next task likely starts."""
        self._start_spare(checkout.repo, next_commit or checkout.base)
        self._track(asyncio.create_task(self._remove(checkout)))

    def _track(self, job: asyncio.Task[Any]) -> None:
        self._removals.add(job)
        job.add_done_callback(self._removals.discard)

    async def _remove(self, checkout: Checkout) -> None:
        try:
            await self._remove_path(checkout.repo, checkout.path)
        finally:
            self._state(checkout.repo).users -= 1

    async def _remove_path(self, repo: Path, path: Path) -> None:
        if not await asyncio.to_thread(path.exists):
            return
        result = await self.git.run(
            ["worktree", "remove", "--force", "--force", str(path)], cwd=repo, check=False
        )
        if result.returncode != 0:
            await asyncio.to_thread(shutil.rmtree, path, True)
            await self.git.run(["worktree", "prune"], cwd=repo, check=False)

    async def _drop_spare(self, repo: Path) -> None:
        job = self._spares.pop(repo, None)
        if job is None or job.cancelled():
            return
        with contextlib.suppress(Exception):
            path = await asyncio.shield(job)
            if path is not None:
                await self._remove_path(repo, path)

    async def settle(self) -> None:
        """Wait until background removals and spare worktrees are done (tests and benchmarks)."""
        while self._removals:
            await asyncio.gather(*list(self._removals), return_exceptions=True)

    async def aclose(self) -> None:
        """Finish removals and remove the spare worktrees; the cache stays for the next process."""
        self._closing = True
        await self.settle()
        for repo in list(self._spares):
            await self._drop_spare(repo)

    async def commit(self, checkout: Checkout, message: str) -> str:
        """Commit whatever the handler left in the worktree (its own commits included); the commit SHA."""
        wt = checkout.path
        await self._git(["add", "--all"], url=checkout.url, what="changes", op="commit", cwd=wt)
        tree = (
            await self._git(["write-tree"], url=checkout.url, what="changes", op="commit", cwd=wt)
        ).strip()
        head = (
            await self._git(["rev-parse", "HEAD"], url=checkout.url, what="HEAD", op="commit", cwd=wt)
        ).strip()
        head_tree = (
            await self._git(["rev-parse", "HEAD^{tree}"], url=checkout.url, what="HEAD", op="commit", cwd=wt)
        ).strip()
        if tree == head_tree:
            return head
        return await self._commit_tree(checkout.repo, checkout.url, tree, [head], message)

    async def _commit_tree(self, repo: Path, url: str, tree: str, parents: list[str], message: str) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        name, email = self.settings.author_name, self.settings.author_email
        identity = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        try:
            result = await self.git.run(args, cwd=repo, env=identity, stdin=message.encode())
        except GitFailed as exc:
            raise git_error(exc.stderr, url=url, what="a commit", operation="commit") from None
        return result.stdout.strip()

    async def describe(
        self, repo: Path, url: str, base: str, commit: str, push_ref: str | None
    ) -> dict[str, Any]:
        """The `workspace` part of a result: commit, changed files and diffstat against `base`."""
        if commit == base:
            return unchanged_workspace(base)
        names = await self._git(
            ["diff", "--no-renames", "--name-only", "-z", base, commit],
            url=url,
            what="diff",
            op="diff",
            cwd=repo,
        )
        stat = await self._git(
            ["diff", "--no-renames", "--shortstat", base, commit], url=url, what="diff", op="diff", cwd=repo
        )
        files = [name for name in names.split("\0") if name]
        match = _SHORTSTAT_RE.search(stat)
        numbers = [int(g) if g else 0 for g in match.groups()] if match else [len(files), 0, 0]
        return {
            "base": base,
            "commit": commit,
            "changed": True,
            "ref": push_ref,
            "files": files[:MAX_FILES],
            "diffstat": {"files": numbers[0], "insertions": numbers[1], "deletions": numbers[2]},
        }

    async def push(self, repo: Path, url: str, commit: str, ref: str, *, force: bool = True) -> None:
        args = ["push", "--quiet", "--porcelain", url, f"{'+' if force else ''}{commit}:{ref}"]
        try:
            await self.git.run(args, cwd=repo, timeout=self.settings.network_timeout)
        except GitFailed as exc:
            # --porcelain puts the per-ref verdict ("!\t<src>:<dst>\t[remote rejected] (reason)") on stdout.
            raise git_error(
                exc.result.stdout + "\n" + exc.stderr, url=url, what=ref, operation="push"
            ) from None
        except TimeoutError:
            raise self._timed_out("push", url) from None
        self.stats.pushes += 1

    # ---- the four actions ----

    async def run(
        self,
        spec: TaskWorkspace,
        *,
        workflow: str = "",
        step: str = "",
        label: str = "task",
        handler: Callable[[Path], Awaitable[tuple[Any, str | None]]] | None = None,
    ) -> tuple[dict[str, Any], Any]:
        """Do the task's workspace action: (the `workspace` result part, the handler's own result or None).

        `handler(worktree)` runs for checkout only and returns (its result, a commit message or None).
        """
        match spec.action:
            case WorkspaceAction.CHECKOUT:
                assert spec.base is not None
                checkout = await self.prepare(spec.url, spec.base, label=label)
                try:
                    output, message = (None, None) if handler is None else await handler(checkout.path)
                    commit = await self.commit(checkout, message or default_message(step, workflow))
                    if commit != spec.base and spec.push_ref:
                        await self.push(checkout.repo, spec.url, commit, spec.push_ref)
                    described = await self.describe(checkout.repo, spec.url, spec.base, commit, spec.push_ref)
                except BaseException:
                    self.release(checkout)
                    raise
                # The next task of this pool most likely starts from this task's output.
                self.release(checkout, commit)
                return described, output
            case WorkspaceAction.RESOLVE:
                assert spec.ref is not None
                return {"ref": spec.ref, "commit": await self.resolve(spec.url, spec.ref)}, None
            case WorkspaceAction.MERGE:
                assert spec.base is not None
                assert spec.push_ref is not None
                return await self.merge(spec.url, spec.base, spec.parts, spec.push_ref, step, workflow), None
            case WorkspaceAction.PUBLISH:
                assert spec.commit is not None
                assert spec.push_ref is not None
                repo = await self.ensure_commits(spec.url, [spec.commit, *([spec.base] if spec.base else [])])
                await self.push(repo, spec.url, spec.commit, spec.push_ref)
                if spec.base:  # the run's diff against its base, for the Workflow status (contract, i11-flow)
                    return await self.describe(repo, spec.url, spec.base, spec.commit, spec.push_ref), None
                return {"ref": spec.push_ref, "commit": spec.commit}, None
            case WorkspaceAction.CLEANUP:
                assert spec.push_ref is not None
                return await self.cleanup(spec.url, spec.push_ref), None
        raise WorkspaceError(ErrorKind.INVALID, f"unknown workspace action {spec.action!r}")

    async def resolve(self, url: str, ref: str) -> str:
        """The commit `ref` (branch, tag, full ref or commit id) names in the repository at `url`."""
        if COMMIT_RE.match(ref):
            await self.ensure_commits(url, [ref])
            return ref
        listing = await self._git(["ls-remote", url], url=url, what=f"ref {ref!r}", op="resolve", net=True)
        refs: dict[str, str] = {}
        for line in listing.splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        for candidate in (
            f"{ref}^{{}}",
            ref,
            f"refs/heads/{ref}",
            f"refs/tags/{ref}^{{}}",
            f"refs/tags/{ref}",
        ):
            if candidate in refs:
                return refs[candidate]
        raise WorkspaceError(
            ErrorKind.MISSING,
            f"resolve: ref {ref!r} not found in {redact(url)}: check the Workflow's spec.workspace.git.ref "
            "(a branch, tag or commit that exists there)",
        )

    async def cleanup(self, url: str, prefix: str) -> dict[str, Any]:
        """Delete the refs under `prefix` (a run's step refs, refs/codeforge/<run>/) in the repository at
        `url`: listed with ls-remote, deleted by pushes of at most CLEANUP_CHUNK refs each. Idempotent."""
        repo = self.repo_path(url)
        async with self._locked(repo):  # push needs a repository; no objects are fetched
            repo = await self._ensure_repo(url)

        async def listed() -> list[str]:
            # ls-remote matches patterns against the refs' tails (the server gets a prefix): filter exactly.
            out = await self._git(
                ["ls-remote", "--refs", url, f"{prefix}*"], url=url, what=prefix, op="cleanup", net=True
            )
            names = (line.partition("\t")[2] for line in out.splitlines())
            return [name for name in names if name.startswith(prefix)]

        found = await listed()
        doomed = found[:MAX_CLEANUP_REFS]
        for start in range(0, len(doomed), CLEANUP_CHUNK):
            chunk = doomed[start : start + CLEANUP_CHUNK]
            args = ["push", "--quiet", "--porcelain", url, *(f":{ref}" for ref in chunk)]
            try:
                await self.git.run(args, cwd=repo, timeout=self.settings.network_timeout)
            except GitFailed as exc:
                # A concurrent cleanup (a redelivered task) may have deleted some first: only refs still
                # there count as a failure.
                if set(chunk) & set(await listed()):
                    raise git_error(
                        exc.result.stdout + "\n" + exc.stderr, url=url, what=prefix, operation="cleanup"
                    ) from None
            except TimeoutError:
                raise self._timed_out("cleanup", url) from None
        log.info("deleted %d ref(s) under %s in %s", len(doomed), prefix, redact(url))
        result: dict[str, Any] = {"ref": prefix, "deleted": len(doomed)}
        if len(found) > len(doomed):
            result["remaining"] = len(found) - len(doomed)  # a later cleanup of the same prefix takes them
        return result

    async def merge(
        self, url: str, base: str, parts: list[str], push_ref: str, step: str = "", workflow: str = ""
    ) -> dict[str, Any]:
        """Merge `parts` into `base` in order (without a worktree) and push the result to `push_ref`."""
        repo = await self.ensure_commits(url, [base, *parts])
        current = base
        for index, part in enumerate(parts):
            if await self._is_ancestor(repo, part, current):
                continue
            if await self._is_ancestor(repo, current, part):
                current = part
                continue
            result = await self.git.run(
                ["merge-tree", "--write-tree", "--name-only", "--no-messages", current, part],
                cwd=repo,
                check=False,
            )
            lines = [line for line in result.stdout.splitlines() if line]
            if result.returncode == 1:
                names = list(dict.fromkeys(lines[1:]))
                shown = ", ".join(names[:MAX_CONFLICT_NAMES]) + (
                    f" and {len(names) - MAX_CONFLICT_NAMES} more" if len(names) > MAX_CONFLICT_NAMES else ""
                )
                raise WorkspaceError(
                    ErrorKind.CONFLICT, f"merge conflict in: {shown} (part {index} of step {step or '?'})"
                )
            if result.returncode != 0 or not lines:
                raise git_error(result.stderr, url=url, what=f"commit {part}", operation="merge")
            message = f"codeforge: merge part {index} of {step or 'step'} of {workflow or 'workflow'}"
            current = await self._commit_tree(repo, url, lines[0], [current, part], message)
        if current != base:
            await self.push(repo, url, current, push_ref)
        return await self.describe(repo, url, base, current, push_ref)

    async def _is_ancestor(self, repo: Path, ancestor: str, descendant: str) -> bool:
        result = await self.git.run(
            ["merge-base", "--is-ancestor", ancestor, descendant], cwd=repo, check=False
        )
        return result.returncode == 0

    # ---- helpers ----

    def _timed_out(self, op: str, url: str) -> WorkspaceError:
        """The error of a git network operation that outlived the timeout (retryable: a network problem)."""
        return WorkspaceError(
            ErrorKind.NETWORK,
            f"{op}: {redact(url)} did not answer within {self.settings.network_timeout:.0f}s",
        )

    async def _git(
        self,
        args: list[str],
        *,
        url: str,
        what: str,
        op: str,
        cwd: Path | None = None,
        net: bool = False,
    ) -> str:
        try:
            result = await self.git.run(args, cwd=cwd, timeout=self.settings.network_timeout if net else None)
        except GitFailed as exc:
            error = git_error(exc.stderr, url=url, what=what, operation=op)
            if error.kind is ErrorKind.FULL:
                await self._evict()
            raise error from None
        except TimeoutError:
            raise self._timed_out(op, url) from None
        except OSError as exc:
            if exc.errno == 28:
                await self._evict()
                raise WorkspaceError(
                    ErrorKind.FULL, f"{op}: the workspace cache volume is full ({exc})"
                ) from None
            raise
        return result.stdout


def default_message(step: str, workflow: str) -> str:
    return f"codeforge: {step or 'task'} of {workflow or 'ad-hoc task'}"


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
