"""The workspace actions a task asks for (checkout, resolve, merge, publish, cleanup), and the Git work behind
them: commit what the handler left, describe it against its base, push it.

`Workspaces` is the agent's one object for all of it: the cache (`cache.py`) and the worktrees
(`worktrees.py`) beneath it are its parts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from codeforge.api.task import COMMIT_RE, TaskWorkspace, WorkspaceAction, unchanged_workspace
from codeforge.workspace.cache import RepoCache, WorkspaceSettings
from codeforge.workspace.errors import ErrorKind, WorkspaceError, git_error, redact
from codeforge.workspace.git import GitFailed
from codeforge.workspace.worktrees import Checkout, Worktrees

MAX_FILES: Final = 1000
MAX_CONFLICT_NAMES: Final = 20
#: A cleanup deletes at most this many refs (a run has far fewer), in pushes of CLEANUP_CHUNK refs.
MAX_CLEANUP_REFS: Final = 10_000
CLEANUP_CHUNK: Final = 200
_SHORTSTAT_RE: Final = re.compile(
    r"(\d+) files? changed(?:, (\d+) insertions?\(\+\))?(?:, (\d+) deletions?\(-\))?"
)

log = logging.getLogger("codeforge.workspace")


class Workspaces:
    """One per agent process. Safe for concurrent tasks; the cache dir may be shared by processes."""

    def __init__(self, settings: WorkspaceSettings) -> None:
        self.settings = settings
        self.cache = RepoCache(settings)
        self.worktrees = Worktrees(settings, self.cache)
        self.git = self.cache.git
        self.stats = self.cache.stats

    def repo_path(self, url: str) -> Path:
        return self.cache.repo_path(url)

    async def ensure_commits(self, url: str, shas: list[str]) -> Path:
        """The cached repository for `url`, holding every commit in `shas` (fetching only what is missing)."""
        return await self.cache.ensure_commits(url, shas)

    async def prepare(self, url: str, base: str, *, label: str = "task") -> Checkout:
        """A worktree at `base` that no handler has used (see `Worktrees.prepare`)."""
        return await self.worktrees.prepare(url, base, label=label)

    def release(self, checkout: Checkout, next_commit: str | None = None) -> None:
        self.worktrees.release(checkout, next_commit)

    async def settle(self) -> None:
        """Wait until background removals and spare worktrees are done (tests and benchmarks)."""
        await self.worktrees.settle()

    async def aclose(self) -> None:
        """Finish removals and remove the spare worktrees; the cache stays for the next process."""
        await self.worktrees.aclose()

    async def commit(self, checkout: Checkout, message: str) -> str:
        """Commit whatever the handler left in the worktree (its own commits included); the commit SHA."""
        wt = checkout.path
        await self.cache.call(["add", "--all"], url=checkout.url, what="changes", op="commit", cwd=wt)
        tree = (
            await self.cache.call(["write-tree"], url=checkout.url, what="changes", op="commit", cwd=wt)
        ).strip()
        head = (
            await self.cache.call(["rev-parse", "HEAD"], url=checkout.url, what="HEAD", op="commit", cwd=wt)
        ).strip()
        head_tree = (
            await self.cache.call(
                ["rev-parse", "HEAD^{tree}"], url=checkout.url, what="HEAD", op="commit", cwd=wt
            )
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
        names = await self.cache.call(
            ["diff", "--no-renames", "--name-only", "-z", base, commit],
            url=url,
            what="diff",
            op="diff",
            cwd=repo,
        )
        stat = await self.cache.call(
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
            raise self.cache.timed_out("push", url) from None
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
                checkout = await self.worktrees.prepare(spec.url, spec.base, label=label)
                try:
                    output, message = (None, None) if handler is None else await handler(checkout.path)
                    commit = await self.commit(checkout, message or default_message(step, workflow))
                    if commit != spec.base and spec.push_ref:
                        await self.push(checkout.repo, spec.url, commit, spec.push_ref)
                    described = await self.describe(checkout.repo, spec.url, spec.base, commit, spec.push_ref)
                except BaseException:
                    self.worktrees.release(checkout)
                    raise
                # The next task of this pool most likely starts from this task's output.
                self.worktrees.release(checkout, commit)
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
                repo = await self.cache.ensure_commits(
                    spec.url, [spec.commit, *([spec.base] if spec.base else [])]
                )
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
            await self.cache.ensure_commits(url, [ref])
            return ref
        listing = await self.cache.call(
            ["ls-remote", url], url=url, what=f"ref {ref!r}", op="resolve", net=True
        )
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
        repo = self.cache.repo_path(url)
        async with self.cache.locked(repo):  # push needs a repository; no objects are fetched
            repo = await self.cache.ensure_repo(url)

        async def listed() -> list[str]:
            # ls-remote matches patterns against the refs' tails (the server gets a prefix): filter exactly.
            out = await self.cache.call(
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
                raise self.cache.timed_out("cleanup", url) from None
        log.info("deleted %d ref(s) under %s in %s", len(doomed), prefix, redact(url))
        result: dict[str, Any] = {"ref": prefix, "deleted": len(doomed)}
        if len(found) > len(doomed):
            result["remaining"] = len(found) - len(doomed)  # a later cleanup of the same prefix takes them
        return result

    async def merge(
        self, url: str, base: str, parts: list[str], push_ref: str, step: str = "", workflow: str = ""
    ) -> dict[str, Any]:
        """Merge `parts` into `base` in order (without a worktree) and push the result to `push_ref`."""
        repo = await self.cache.ensure_commits(url, [base, *parts])
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


def default_message(step: str, workflow: str) -> str:
    return f"codeforge: {step or 'task'} of {workflow or 'ad-hoc task'}"
