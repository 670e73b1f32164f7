"""Worktrees: one per task, from the cache, with a spare made in the background for the next task.

Checking out a large tree is slow (10,000 files, 100 MiB: seconds), so while a task runs the agent prepares a
spare worktree of the repository in the background (`git worktree add --detach`, never handed to a handler
before); the next task takes it and moves it to its base, which rewrites only the files that differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from codeforge.workspace.cache import RepoCache, WorkspaceSettings
from codeforge.workspace.errors import WorkspaceError

#: `git worktree add` tries when it races with another task's add or removal in the same repository.
WORKTREE_ADD_TRIES: Final = 3
#: What git says then: an add racing with the removal of the empty worktrees/ directory (the last worktree
#: gone), or meeting a worktree another add has not finished writing (its commondir still empty: "fatal:
#: failed to read .../worktrees/<name>/commondir: Success"). Each fails once and succeeds when tried again.
WORKTREE_ADD_RACES: Final = ("could not create directory of", "failed to read ")


@dataclass(frozen=True)
class Checkout:
    url: str
    repo: Path
    path: Path
    base: str


class Worktrees:
    """The worktrees of one agent process: handed out by `prepare`, removed in the background by `release`."""

    def __init__(self, settings: WorkspaceSettings, cache: RepoCache) -> None:
        self.settings = settings
        self.cache = cache
        self.git = cache.git
        self._removals: set[asyncio.Task[Any]] = set()
        self._spares: dict[Path, asyncio.Task[Path | None]] = {}
        self._closing = False
        cache.before_evict.append(self.drop_spare)

    async def prepare(self, url: str, base: str, *, label: str = "task") -> Checkout:
        """A worktree at `base` that no handler has used, from the cache (fetching `base` only if missing):
        the spare, moved to `base`, when one is ready; else (first task, concurrent tasks) a new worktree."""
        repo = await self.cache.ensure_commits(url, [base])
        self.cache.state(repo).users += 1
        try:
            spare = await self._take_spare(repo, base)
            path = spare or self.cache.new_worktree_path(label)
            if spare is None:
                try:
                    await self._add_worktree(repo, url, path, base)
                except BaseException:
                    await self._remove_path(repo, path)
                    raise
        except BaseException:
            self.cache.state(repo).users -= 1
            raise
        self._start_spare(repo, base)  # ready by the time the next task comes, made while this one runs
        return Checkout(url, repo, path, base)

    async def _add_worktree(self, repo: Path, url: str, path: Path, base: str) -> None:
        for attempt in range(WORKTREE_ADD_TRIES):
            try:
                await self.cache.call(
                    ["worktree", "add", "--quiet", "--detach", str(path), base],
                    url=url,
                    what=f"commit {base}",
                    op="checkout",
                    cwd=repo,
                )
                return
            except WorkspaceError as exc:
                raced = any(race in str(exc) for race in WORKTREE_ADD_RACES)
                if not raced or attempt + 1 == WORKTREE_ADD_TRIES:
                    raise
                await self._remove_path(repo, path)
                await asyncio.sleep(0.05 * (attempt + 1))  # the other add writes its files meanwhile

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
        return await asyncio.to_thread(
            self._make_spare_blocking, repo, commit, self.cache.new_worktree_path("spare")
        )

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
            self.cache.state(checkout.repo).users -= 1

    async def _remove_path(self, repo: Path, path: Path) -> None:
        if not await asyncio.to_thread(path.exists):
            return
        result = await self.git.run(
            ["worktree", "remove", "--force", "--force", str(path)], cwd=repo, check=False
        )
        if result.returncode != 0:
            await asyncio.to_thread(shutil.rmtree, path, True)
            await self.git.run(["worktree", "prune"], cwd=repo, check=False)

    async def drop_spare(self, repo: Path) -> None:
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
            await self.drop_spare(repo)
