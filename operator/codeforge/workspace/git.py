"""Running the `git` CLI from asyncio, with credentials from files and nothing secret on a command line.

Why the CLI and not GitPython or pygit2: GitPython shells out to the same CLI, only blocking; pygit2 (libgit2)
has its own transport, credential and SSH stack that behaves differently from the git that coding-agent CLIs
and people use (credential helpers, protocol v2, hooks, `merge-tree --write-tree`). The CLI is what the
handler's own tools run in the same worktree, so the agent sees the repository exactly as they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from codeforge import event_loop
from codeforge.workspace.errors import ErrorKind, WorkspaceError, redact

#: A credential helper that reads the mounted Secret's files when git asks (`get`), so the password never
#: enters this process, its environment, a command line or a URL. `token` alone: user `x-access-token`
#: (GitHub; GitLab and Gitea accept any user with a token).
CREDENTIAL_HELPER: Final = (
    '!f() { test "$1" = get || exit 0; d="$CODEFORGE_GIT_CREDENTIALS_DIR"; '
    'if test -f "$d/token"; then u=x-access-token; test -f "$d/username" && u=$(cat "$d/username"); '
    'p=$(cat "$d/token"); elif test -f "$d/password"; then u=$(cat "$d/username" 2>/dev/null); '
    'p=$(cat "$d/password"); else exit 0; fi; printf "username=%s\\npassword=%s\\n" "$u" "$p"; }; f'
)


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: str
    stderr: str


class Git:
    """Runs git with a fixed, hermetic environment: no user/system config, no prompts, our credentials."""

    def __init__(self, credentials_dir: str | Path | None = None, *, private_dir: Path | None = None) -> None:
        if shutil.which("git") is None:
            raise WorkspaceError(
                ErrorKind.INVALID, "git is not installed: the agent image needs git (and openssh-client)"
            )
        self.env = self._environment(credentials_dir, private_dir)

    @staticmethod
    def _environment(credentials_dir: str | Path | None, private_dir: Path | None) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.setdefault("HOME", "/nonexistent")
        config: list[tuple[str, str]] = [
            ("credential.helper", ""),  # forget any helper configured elsewhere
            ("protocol.version", "2"),
            ("gc.autoDetach", "false"),  # no background gc racing worktree removal
            ("advice.detachedHead", "false"),
            ("init.defaultBranch", "main"),
            ("core.hooksPath", "/dev/null"),  # handlers' repositories must not run hooks in the agent
        ]
        env.update(
            GIT_TERMINAL_PROMPT="0",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL="/dev/null",
            GIT_ASKPASS="/bin/false",
            SSH_ASKPASS="/bin/false",
            LC_ALL="C",
        )
        ssh = ["ssh", "-o", "BatchMode=yes"]
        if credentials_dir is not None:
            directory = Path(credentials_dir)
            if not directory.is_dir():
                raise WorkspaceError(
                    ErrorKind.INVALID,
                    f"git credentials directory {str(directory)!r} does not exist: mount the Secret named in "
                    "spec.workspace.credentialsSecret there or unset CODEFORGE_GIT_CREDENTIALS_DIR",
                )
            env["CODEFORGE_GIT_CREDENTIALS_DIR"] = str(directory.resolve())
            config.append(("credential.helper", CREDENTIAL_HELPER))
            key = directory / "ssh-privatekey"
            if key.is_file():
                # ssh refuses keys readable by others, and Secret volumes are often group-readable: use a
                # private copy (0600) in a directory only the agent reads.
                target_dir = private_dir or directory
                target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                copy = target_dir / "ssh-privatekey"
                fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(key.read_bytes())
                ssh += ["-o", "IdentitiesOnly=yes", "-i", str(copy)]
                known_hosts = directory / "known_hosts"
                if known_hosts.is_file():
                    ssh += [
                        "-o",
                        f"UserKnownHostsFile={known_hosts.resolve()}",
                        "-o",
                        "StrictHostKeyChecking=yes",
                    ]
        env["GIT_SSH_COMMAND"] = " ".join(_shell_quote(a) for a in ssh)
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key_name, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key_name
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    async def run(
        self,
        args: Sequence[str],
        *,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> GitResult:
        """Run `git args...`; a non-zero exit raises RuntimeError-free GitFailed (see `check`)."""
        full_env = self.env if env is None else {**self.env, **env}
        try:
            process = await asyncio.create_subprocess_exec(
                "git",
                *args,
                cwd=None if cwd is None else str(cwd),
                env=full_env,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC while forking? still report it as a full volume
                raise WorkspaceError(ErrorKind.FULL, f"cannot start git: {exc}") from None
            raise WorkspaceError(ErrorKind.GIT, f"cannot start git: {exc}") from None
        try:
            out, err = await asyncio.wait_for(event_loop.communicate(process, stdin), timeout)
        except BaseException:
            # Cancelled (lease lost, task timeout, shutdown) or timed out: git and its helpers go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, 9)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(process.wait(), 5.0)
            raise
        result = GitResult(
            process.returncode or 0, out.decode("utf-8", "replace"), redact(err.decode("utf-8", "replace"))
        )
        if check and result.returncode != 0:
            raise GitFailed(args, result)
        return result

    def run_blocking(self, args: Sequence[str], *, cwd: str | Path | None = None) -> GitResult:
        """Run git synchronously (call it in a thread): for background work that teardown may cancel.

        Cancelling a task while asyncio creates a subprocess can hang the event loop's teardown in Python
        3.11; a thread is simply waited for (git finishes), so background spares use this.
        """
        done = subprocess.run(["git", *args], cwd=cwd, env=self.env, capture_output=True, check=False)
        return GitResult(
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            redact(done.stderr.decode("utf-8", "replace")),
        )


class GitFailed(Exception):
    def __init__(self, args: Sequence[str], result: GitResult) -> None:
        super().__init__(
            f"git {args[0] if args else ''} exited with {result.returncode}: {result.stderr[-500:]}"
        )
        self.args_ = list(args)
        self.result = result

    @property
    def stderr(self) -> str:
        return self.result.stderr


def _shell_quote(arg: str) -> str:
    # GIT_SSH_COMMAND is run by a shell.
    import shlex

    return shlex.quote(arg)
