"""A simulated Ray cluster on this machine for the sweep's cluster tests: a head and worker nodes built as
Ray's cluster utilities build them, on 127.0.0.1, each in its own process group (killing the group is a
machine dying; ``ray_node.py``), optionally in a private mount namespace with empty tmpfs over given
folders (a machine without the shared storage); an ``mlflow server`` behind a small proxy that demands
HTTP basic authentication (a tracking server with credentials). Everything is started on 127.0.0.1 and
stopped by the fixture.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.helpers import free_port, wait_for  # noqa: F401 - re-exported to the multi-node tests

BIN = Path(sys.executable).parent
NODE_SCRIPT = Path(__file__).with_name("ray_node.py")


class Service:
    """A process we started in a session of its own (so its children share its process group)."""

    def __init__(self, cmd: list[str], log: Path, env: dict, cwd=None):
        self.cmd, self.log = cmd, Path(log)
        self._out = open(log, "w")  # noqa: SIM115 - the process writes it until stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group: the machine is gone."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(30)
        self._out.close()

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM (``ray start --block`` then stops its node), then SIGKILL to what is left of the group."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def unshare_prefix() -> list[str] | None:
    """How to start a process in a private mount namespace here (root: ``unshare -m``; else a user
    namespace), or None when neither works."""
    for prefix in (["unshare", "-m", "--propagation", "private"], ["unshare", "-Urm", "--propagation", "private"]):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


class RayCluster:
    """A head and worker nodes on 127.0.0.1 (``ray_node.py``), each in a process group of its own, with
    ``num_cpus`` CPUs and a small object store; their files under a short private ``$RAY_TMPDIR``."""

    def __init__(self, root: Path, env: dict, head_cpus: int = 0):
        self.root = Path(root)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: socket path length limit
        self.env = {**env, "RAY_TMPDIR": str(self.temp_dir)}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, Service] = {}
        self.node_ids: dict[str, str] = {}
        self._start("head", ["head", str(self.port)], head_cpus)
        self.wait("head")

    def _start(self, name: str, args: list[str], num_cpus: int, prefix=None, tmpfs=()) -> Service:
        info = self.root / f"node-{name}.json"
        info.unlink(missing_ok=True)
        cmd = [sys.executable, str(NODE_SCRIPT), args[0], str(info), *args[1:], str(num_cpus)]
        if prefix:  # a machine without the shared folders: empty tmpfs over them, in its own mount namespace
            mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(p))}" for p in tmpfs)
            cmd = [*prefix, "sh", "-c", f"{mounts} && exec {shlex.join(cmd)}"]
        self.nodes[name] = Service(cmd, self.root / f"ray-{name}.log", self.env)
        return self.nodes[name]

    def add_worker(self, name: str, num_cpus: int = 1, prefix=None, tmpfs=()) -> str:
        """Start a worker node and wait for it (nodes of one host start one at a time: they pick their socket
        names in the shared session folder); ``prefix``/``tmpfs``: see :func:`unshare_prefix`. Returns its id."""
        self._start(name, ["worker", self.address], num_cpus, prefix, tmpfs)
        return self.wait(name)[name]

    def wait(self, *names: str, timeout: float = 180) -> dict[str, str]:
        """Until the named nodes are up; returns and records ``{name: node id}``."""
        for name in names:
            info, node = self.root / f"node-{name}.json", self.nodes[name]
            wait_for(info.exists, timeout, f"Ray node {name}", node.proc, node.log)
            self.node_ids[name] = json.loads(info.read_text())["node_id"]
        return {n: self.node_ids[n] for n in names}

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# ------------------------------------------------------------------------------- tracking server
def mlflow_server(root: Path, env: dict) -> tuple[Service, str]:
    port = free_port()
    server = Service(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        root / "mlflow.log",
        {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        cwd=root,
    )
    return server, f"http://127.0.0.1:{port}"


class AuthProxy:
    """An HTTP proxy in front of the tracking server that answers 401 to any request without the given
    basic-auth credentials (as a server with authentication does); counts the refusals."""

    _HOP = {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "content-length",
    }

    def __init__(self, upstream: str, user: str, password: str):
        host, port = upstream.split("//", 1)[1].split(":")
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.refused: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self):
                body = self._body()
                if self.headers.get("Authorization") != proxy.expected:
                    proxy.refused.append(f"{self.command} {self.path}")
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=300)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in self._HOP_}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in self._HOP_:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            _HOP_ = AuthProxy._HOP
            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
