"""Credentials against a real smart-HTTP git server (git http-backend behind Basic auth):
the mirror is cloned and fetched, the branch pushed, and no secret is ever written into
a `.git/config`, a record or anything else on disk."""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.workspace_manager.credentials import auth_env, without_credentials
from services.workspace_manager.mirrors import MirrorCache
from services.workspace_manager.workspaces import WorkspaceFactory
from tests.support.gitrepo import git, make_origin

SECRETS = {"alice": "pa55-word", "x-access-token": "tok-123"}


class _GitHttp(BaseHTTPRequestHandler):
    root: Path
    seen: list[str]

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = bytearray()
            while size := int(self.rfile.readline().strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            self._serve(bytes(body))
        else:
            self._serve(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _serve(self, body: bytes) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        if SECRETS.get(user) != password:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {"GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "REMOTE_USER": user,
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    root = tmp_path / "served"
    origin = make_origin(root)
    git("config", "http.receivepack", "true", cwd=origin)
    seen: list[str] = []
    handler = type("Handler", (_GitHttp,), {"root": root, "seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/origin.git", seen
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        httpd.server_close()


def test_auth_env_scopes_the_header_to_the_host_and_strips_the_url() -> None:
    env = auth_env("https://alice:pa55-word@git.example.com/a/b.git")
    assert env["GIT_CONFIG_KEY_0"] == "http.https://git.example.com/.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"] == "Authorization: Basic " + base64.b64encode(
        b"alice:pa55-word").decode()
    token = auth_env("https://git.example.com/a.git", {"git.example.com": "t"})
    assert base64.b64decode(token["GIT_CONFIG_VALUE_0"].split()[-1]) == b"x-access-token:t"
    assert auth_env("https://other.example.com/a.git", {"git.example.com": "t"}) == {}
    assert auth_env("/srv/git/a.git") == {}
    assert without_credentials("https://alice:pw@h:8443/a.git") == "https://h:8443/a.git"


async def test_credentials_reach_the_server_and_never_the_disk(
    server: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, seen = server
    host_url = url.replace("http://", "http://alice:pa55-word@")
    factory = WorkspaceFactory(
        MirrorCache(tmp_path / "mirrors", refresh_seconds=0, tokens={"127.0.0.1": "tok-123"}),
        tmp_path / "workspaces", tokens={"127.0.0.1": "tok-123"},
    )
    ws = await factory.create("run1", "acme/widgets", host_url, None, "zloth/run1")
    await factory.create("run2", "acme/widgets", host_url, None, "zloth/run2")  # a fetch
    (Path(ws.path) / "notes.md").write_text("pushed over http\n")
    done = await factory.commit(Path(ws.path), ws.base_sha, "m", "run1")
    pushed = await factory.push(Path(ws.path))
    assert pushed.sha == done.commit_sha
    served = tmp_path / "served" / "origin.git"
    assert git("rev-parse", "zloth/run1", cwd=served).strip() == done.commit_sha
    assert seen and all(auth.startswith("Basic ") for auth in seen)
    assert git("config", "remote.origin.url", cwd=Path(ws.path)).strip() == url
    for path in tmp_path.rglob("*"):
        if path.is_file() and "served" not in path.parts:
            content = path.read_bytes()
            for secret in SECRETS.values():
                assert secret.encode() not in content, path
            assert base64.b64encode(b"alice:pa55-word") not in content, path
