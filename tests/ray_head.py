"""An isolated, real Ray head node on loopback for tests (`ray start --head`), torn down without `ray stop`.

`ray stop --force` kills every Ray process on the machine, including other tests' clusters and benchmarks. This
head gets its own temp dir and free ports; teardown kills only the processes that belong to it: the ones whose
command line names its temp dir, plus all of their descendants (workers rename themselves `ray::...`, but they are
children of this head's raylet).

    with RayHead(num_cpus=2, dashboard=True) as head:
        env = head.env()          # RAY_ADDRESS (+ token auth when ~/.ray/auth_token exists)
        head.dashboard_url        # for `ray job submit --address ...` (dashboard=True only)
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(self, num_cpus: int = 2, dashboard: bool = False, start_timeout: float = 180.0):
        self.num_cpus = num_cpus
        self.dashboard = dashboard
        self.start_timeout = start_timeout
        # short path: Ray's unix sockets live under it (108-byte limit)
        self.temp_dir = tempfile.mkdtemp(prefix="kdray_", dir="/tmp")
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.dashboard_port = free_port() if dashboard else None
        self.dashboard_url = f"http://{HOST}:{self.dashboard_port}" if dashboard else None

    # ---------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "RayHead":
        cmd = ["ray", "start", "--head", f"--node-ip-address={HOST}", f"--port={self.port}",
               f"--num-cpus={self.num_cpus}", "--num-gpus=0", f"--temp-dir={self.temp_dir}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
        if self.dashboard:
            cmd += ["--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={self.dashboard_port}"]
        else:
            cmd += ["--include-dashboard=false"]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.start_timeout, env=env)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return self

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ + RAY_ADDRESS of this head (token auth on when this machine's Ray uses it)."""
        env = {**os.environ, "RAY_ADDRESS": self.address, **extra}
        if (Path.home() / ".ray" / "auth_token").is_file():
            env.setdefault("RAY_AUTH_MODE", "token")
        return env

    def _own_processes(self) -> list[psutil.Process]:
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(self.temp_dir in part for part in (p.info["cmdline"] or [])):
                    roots.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        procs = {p.pid: p for p in roots}
        for p in roots:
            try:
                procs.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
        procs.pop(os.getpid(), None)
        return list(procs.values())

    def stop(self, timeout: float = 20.0) -> None:
        procs = self._own_processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
