"""A real Git server for tests: `git http-backend` (smart HTTP) with basic auth on 127.0.0.1; bare repos.

`GitServer` serves every bare repository under its root at http://127.0.0.1:<port>/<name>.git, asks for
basic auth (one user) on every request, and records each request (method, path, response bytes) so tests
can see whether an agent fetched and how much. `make_bare_repo` builds a bare repository from a dict of
files, usable as file:// directly.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

HTTP_BACKEND = (
    Path(subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip())
    / "git-http-backend"
)
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(*args: str, cwd: str | Path | None = None, stdin: bytes | None = None) -> str:
    """Run git with a clean config (no user/system settings); return stdout, raise with stderr on failure."""
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def make_bare_repo(path: Path, files: Mapping[str, str | bytes], *, branch: str = "main") -> str:
    """A bare repository at `path` whose `branch` holds `files` in one commit; returns that commit's SHA."""
    path.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", "--initial-branch", branch, str(path))
    return commit_files(path, files, branch=branch, message="initial")


def commit_files(
    bare: Path, files: Mapping[str, str | bytes | None], *, branch: str = "main", message: str = "change"
) -> str:
    """Commit `files` (None deletes a file) on top of `branch` in the bare repo; returns the new commit."""
    with tempfile.TemporaryDirectory(prefix="cf-gitwork-") as tmp:
        work = Path(tmp)
        git("init", "--quiet", str(work))
        has_branch = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
            cwd=bare,
            capture_output=True,
            env={**os.environ, **GIT_ENV},
            check=False,
        )
        if has_branch.returncode == 0:
            git("fetch", "--quiet", str(bare), f"refs/heads/{branch}", cwd=work)
            git("checkout", "--quiet", "--detach", "FETCH_HEAD", cwd=work)
        for name, content in files.items():
            target = work / name
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        git("add", "--all", cwd=work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=work)
        git("push", "--quiet", str(bare), f"HEAD:refs/heads/{branch}", cwd=work)
        return git("rev-parse", "HEAD", cwd=work).strip()


def read_file(bare: Path, rev: str, name: str) -> str:
    return git("show", f"{rev}:{name}", cwd=bare)


@dataclass
class Request:
    method: str
    path: str
    status: int
    bytes_out: int


@dataclass
class GitServer:
    """Smart HTTP over `git http-backend`; start() / stop() or use as a context manager."""

    root: Path
    username: str = "agent"
    password: str = "s3cret-Pa55"
    #: The address to listen on: loopback by default; the real-node suite serves pods on the node's bridge.
    host: str = "127.0.0.1"
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/{name}"

    def start(self) -> GitServer:
        server_ref = self

        class Handler(_BackendHandler):
            server_info: ClassVar[GitServer] = server_ref

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="git-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def upload_packs(self, name: str) -> list[Request]:
        """The fetches (POST git-upload-pack) made on repository `name`."""
        return [
            r for r in self.requests if r.method == "POST" and r.path.startswith(f"/{name}/git-upload-pack")
        ]

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _BackendHandler(BaseHTTPRequestHandler):
    server_info: ClassVar[GitServer]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        return None

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _authorised(self) -> bool:
        info = self.server_info
        expected = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
        return self.headers.get("Authorization", "") == f"Basic {expected}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        info = self.server_info
        path, _, query = self.path.partition("?")
        if not self._authorised():
            body = self._body() if self.command == "POST" else b""
            del body
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            info.requests.append(Request(self.command, self.path, 401, 0))
            return
        body = self._body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(info.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": info.username,  # authenticated: http-backend enables receive-pack (push)
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        done = subprocess.run([str(HTTP_BACKEND)], input=body, env=env, capture_output=True, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        info.requests.append(Request(self.command, self.path, status, len(payload)))


@contextmanager
def git_server(root: Path) -> Iterator[GitServer]:
    with GitServer(root) as server:
        yield server


def protect_branch(bare: Path, branch: str) -> None:
    """A pre-receive hook that refuses any update of `branch` (like a protected branch on a forge)."""
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "while read old new ref; do\n"
        f'  if [ "$ref" = "refs/heads/{branch}" ]; then\n'
        f'    echo "protected branch: {branch} cannot be pushed to" >&2; exit 1\n'
        "  fi\n"
        "done\n"
    )
    hook.chmod(0o755)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
