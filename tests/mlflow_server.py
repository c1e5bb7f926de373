"""A real `mlflow server` on loopback with a sqlite backend and proxied artifacts, for tests.

    with MLflowServer(tmp_path) as server:
        server.uri            # http://127.0.0.1:<port> — MLFLOW_TRACKING_URI for jobs and clients
        server.env()          # os.environ + MLFLOW_TRACKING_URI

Artifacts go through the server (`--serve-artifacts`, `mlflow-artifacts:/` URIs), as on a shared tracking server:
clients never write into the server's folders directly.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ray_head import HOST, free_port


class MLflowServer:
    def __init__(self, root: Path, start_timeout: float = 120.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://{HOST}:{self.port}"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "mlflow-server.log"

    def start(self) -> "MLflowServer":
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "mlartifacts"), "--serve-artifacts"]
        # no background job runner (MLflow 3's huey consumers): tests never submit server-side jobs
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {self.start_timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri, **extra}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, 15)  # the server and its uvicorn/gunicorn workers
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "MLflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
