"""Local services of the one-machine setup: a Prefect server (SQLite) and a static HTTP file server.

Both bind 127.0.0.1 only. Nothing here imports Prefect at module import time: the server is a
`prefect server start` subprocess configured purely through its environment, so the same code serves
the `viewneti-pipeline` command and the test fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOCALHOST = "127.0.0.1"
DEFAULT_PORT = 4200
SERVER_INFO_FILE = "server.json"


class LocalServiceError(RuntimeError):
    """A local service could not be started or reached; the message says what to do."""


def free_port(host: str = LOCALHOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def api_healthy(api_url: str, timeout_s: float = 2.0, auth_string: str | None = None) -> bool:
    request = urllib.request.Request(api_url.rstrip("/") + "/health")
    if auth_string:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth_string.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ---- Prefect server --------------------------------------------------------------------------------


@dataclass
class PrefectServer:
    """A `prefect server start` subprocess with its own PREFECT_HOME and SQLite database."""

    home: Path
    port: int
    ui: bool = True
    pid: int | None = None
    started_here: bool = False

    @property
    def api_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def database(self) -> Path:
        return self.home / "prefect.db"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def client_env(self) -> dict[str, str]:
        """Environment for processes that talk to this server (workers, flow runs, Dask workers)."""
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PREFECT_API_URL", None)  # the server itself must not point at another API
        env.update({
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.database}",
            "PREFECT_SERVER_API_HOST": LOCALHOST,
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
            "PREFECT_UI_API_URL": self.api_url,
            # the server's own background services poll; keep their CPU use low on small machines
            "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
        })
        return env

    def start(self, timeout_s: float = 120.0, detach: bool = False) -> PrefectServer:
        """Start the server and wait until /api/health answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        if port_in_use(self.port):
            raise LocalServiceError(
                f"port {self.port} on {LOCALHOST} is already in use by something that is not this project's "
                f"Prefect server; pass another port (e.g. --port {free_port()})"
            )
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", LOCALHOST, "--port", str(self.port)],
                env=self.server_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,  # a detached server outlives the command that started it
            )
        finally:
            log.close()
        self.pid = process.pid
        self.started_here = True
        self._process = process
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LocalServiceError(
                    f"the Prefect server exited with code {process.returncode} while starting; see {self.log_file}:\n"
                    + _tail(self.log_file)
                )
            if api_healthy(self.api_url):
                self._write_info()
                return self
            time.sleep(0.5)
        self.stop()
        raise LocalServiceError(f"the Prefect server did not answer within {timeout_s:.0f} s; see {self.log_file}")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.pid is None:
            return
        process = getattr(self, "_process", None)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None:
                    break
            elif not _pid_alive(self.pid):
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        (self.home / SERVER_INFO_FILE).unlink(missing_ok=True)
        self.pid = None

    def _write_info(self) -> None:
        info = {"pid": self.pid, "port": self.port, "api_url": self.api_url, "ui_url": self.ui_url}
        _write_text_atomic(self.home / SERVER_INFO_FILE, json.dumps(info, indent=2) + "\n")

    @classmethod
    def running(cls, home: Path) -> PrefectServer | None:
        """The server recorded in `home` if it is alive and healthy."""
        try:
            info = json.loads((Path(home) / SERVER_INFO_FILE).read_text())
        except (OSError, ValueError):
            return None
        server = cls(Path(home), int(info["port"]), pid=int(info["pid"]))
        if _pid_alive(server.pid) and api_healthy(server.api_url):
            return server
        return None

    @classmethod
    def start_or_reuse(cls, home: Path, port: int | None = None, ui: bool = True, timeout_s: float = 120.0,
                       detach: bool = True) -> PrefectServer:
        home = Path(home).absolute()
        existing = cls.running(home)
        if existing is not None and (port is None or existing.port == port):
            return existing
        return cls(home, port or DEFAULT_PORT, ui=ui).start(timeout_s=timeout_s, detach=detach)


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- static HTTP file server (serves the synthetic DTU archives) -----------------------------------

_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)$")


class _StaticHandler(BaseHTTPRequestHandler):
    """GET/HEAD of the files directly in one directory, with single-range requests (resumable downloads)."""

    protocol_version = "HTTP/1.1"
    root: Path
    counter: dict[str, int]

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass

    def _file(self) -> Path | None:
        name = self.path.split("?", 1)[0].lstrip("/")
        if not name or "/" in name or name.startswith("."):
            return None
        path = self.root / name
        return path if path.is_file() else None

    def do_HEAD(self):  # noqa: N802 - http.server naming
        self._serve(body=False)

    def do_GET(self):  # noqa: N802 - http.server naming
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self._file()
        if path is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        stat = path.stat()
        total = stat.st_size
        etag = f'"{stat.st_mtime_ns:x}-{total:x}"'
        start, end, status = 0, total - 1, 200
        match = _RANGE_RE.match(self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if match and (if_range is None or if_range == etag):
            start = int(match.group(1))
            end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
            if start >= total or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if not body:
            return
        self.counter[path.name] = self.counter.get(path.name, 0) + 1
        with open(path, "rb") as fh:
            fh.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = fh.read(min(1 << 20, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


class StaticFileServer:
    """`with StaticFileServer(dir) as srv: srv.url("Rectified.zip")` - a thread serving `dir` on 127.0.0.1."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise LocalServiceError(f"cannot serve {self.root}: not a directory")
        self.requests: dict[str, int] = {}
        handler = type("Handler", (_StaticHandler,), {"root": self.root, "counter": self.requests})
        try:
            self._server = ThreadingHTTPServer((LOCALHOST, port), handler)
        except OSError as exc:
            raise LocalServiceError(f"cannot serve files on {LOCALHOST}:{port}: {exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="static-file-server")

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, name: str) -> str:
        return f"http://{LOCALHOST}:{self.port}/{name}"

    def start(self) -> StaticFileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StaticFileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

