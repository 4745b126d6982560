"""Flower's deployment engine on loopback: real processes, started and stopped here.

    flower-superlink --insecure --port P                    (Fleet, Control and Runtime
         │                                                   APIs on one HTTP port)
         ├── flower-supernode --insecure --superlink 127.0.0.1:P --port Qᵢ
         │        --node-config "partition-id=i num-partitions=N"      (i = 0 … N-1)
         └── flwr run <app dir> loopback   → the ServerApp and N ClientApps run as
                                             `flwr-serverapp` / `flwr-clientapp` processes

Each of SuperLink and SuperNodes also starts a `flower-superexec` (in a session of its own),
which starts the app processes; `flower-superexec` is looked up on PATH, so the venv's bin
folder goes first on the children's PATH. `FLWR_HOME` points at a folder of the run's own
(the Flower config naming the `loopback` connection, the installed app bundle), so nothing
is written to ~/.flwr. The app bundle is a folder with a generated pyproject.toml whose
components are `lorakit.plugins.federated.server_app:app` / `client_app:app` (importable from
the installed lorakit, so the SuperLink's `uv sync` of app dependencies is switched off)
and whose `[tool.flwr.app.config]` holds this run's settings. The ServerApp writes the
per-round record to `history-file`, which is how the result comes back (and the one-line
message of a lorakit error that stopped it).

Stopping: every process started here is a session leader; `stop` snapshots each one's
descendants (the superexecs and app processes, which live in their own sessions), sends
SIGTERM to the process groups, then SIGKILLs whatever of the snapshot is still alive.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .errors import RunError

PACKAGE = "lorakit.plugins.federated"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))      # a TOML basic string is a JSON string


def write_app(folder: Path, cfg) -> Path:
    """The Flower app bundle folder: a pyproject.toml naming lorakit's apps, with `cfg` as
    its run config (dotted keys like `dp.delta` are TOML's own nesting)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ['[build-system]', 'requires = ["hatchling"]', 'build-backend = "hatchling.build"',
             '', '[project]', 'name = "lorakit-federated"', 'version = "1.0.0"',
             'description = "lorakit federated LoRA on Flower"', 'license = "Apache-2.0"',
             'dependencies = []', '', '[tool.flwr.app]', 'publisher = "lorakit"', '',
             '[tool.flwr.app.components]', f'serverapp = "{PACKAGE}.server_app:app"',
             f'clientapp = "{PACKAGE}.client_app:app"', '', '[tool.flwr.app.config]']
    lines += [f'{key} = {_toml_value(value)}' for key, value in cfg.items()]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


class Loopback:
    """One SuperLink and `clients` SuperNodes on 127.0.0.1, as a context manager:

        with Loopback(4, workdir) as fed:
            history = fed.run(cfg)

    Logs of every process go to `workdir/logs/`."""

    def __init__(self, clients: int, workdir: Path, start_timeout: float = 120.0) -> None:
        self.clients = clients
        self.workdir = Path(workdir).resolve()
        self.start_timeout = start_timeout
        self.link: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen] = []
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    # --- processes --------------------------------------------------------------------
    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (lives as long as the child)
        try:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True, cwd=self.workdir)
        finally:
            log.close()

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def start(self) -> Loopback:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.link = self._start("superlink", [
            self._bin("flower-superlink"), "--insecure", "--port", str(self.port),
            "--disable-runtime-dependency-installation"])
        for i in range(self.clients):
            self.nodes.append(self._start(f"supernode{i}", [
                self._bin("flower-supernode"), "--insecure",
                "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
                "--node-config", f"partition-id={i} num-partitions={self.clients}"]))
        self._wait_for_nodes()
        return self

    def _wait_for_nodes(self) -> None:
        """Until the SuperLink has activated every SuperNode (its log says so; asking the
        Control API through `flwr supernode ls` costs a Python start-up per poll)."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for proc in (self.link, *self.nodes):
                if proc.poll() is not None:
                    raise RunError(f"federated: {proc.args[0]} exited with {proc.returncode} "
                                       f"while starting; see {self.logs}")
            text = (self.logs / "superlink.log").read_text(errors="replace")
            if text.count("Activated node_id") >= self.clients:
                return
            time.sleep(0.5)
        raise RunError(f"federated: {self.clients} SuperNodes did not all connect to the "
                           f"SuperLink within {self.start_timeout:.0f} s; see {self.logs}")

    def kill_node(self, index: int) -> None:
        """SIGKILL SuperNode `index` and everything it started: a client machine that dies."""
        _kill_tree([self.nodes[index]], signal.SIGKILL)

    def stop(self) -> None:
        """Stop every process started here, and the processes they started."""
        roots = [p for p in (self.link, *self.nodes) if p is not None]
        _kill_tree(roots, signal.SIGTERM)

    def __enter__(self) -> Loopback:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- runs ---------------------------------------------------------------------------
    def submit(self, cfg, name: str = "run") -> Path:
        """Submit the app with run config `cfg` (`flwr run`); the path its history goes to."""
        history = self.workdir / f"{name}.history.json"
        history.unlink(missing_ok=True)
        app = write_app(self.workdir / f"{name}-app", {**cfg, "history-file": str(history)})
        out = subprocess.run([self._bin("flwr"), "run", str(app), "loopback", "--format", "json"],
                             env=self.env, capture_output=True, text=True, cwd=self.workdir,
                             timeout=self.start_timeout)
        if out.returncode != 0 or '"success": true' not in out.stdout:
            log = self.logs / f"flwr-run-{name}.log"
            log.write_text(f"{out.stdout}\n{out.stderr}")
            raise RunError(f"federated: `flwr run` of {name!r} failed: {_said(out)}; the "
                           f"whole output is in {log}")
        return history

    def wait(self, history: Path, timeout: float, on_round=None) -> list[dict]:
        """The run's per-round record once the ServerApp has written its last round;
        `on_round(rows)` is called whenever a round is added (e.g. to kill a node)."""
        deadline, seen = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            if self.link.poll() is not None:
                raise RunError(f"federated: the SuperLink exited; see {self.logs}")
            record = _read(history)
            if record is not None:
                if on_round is not None and len(record["history"]) > seen:
                    seen = len(record["history"])
                    on_round(record["history"])
                if record.get("error"):
                    raise RunError(f"{record['error']} (the ServerApp stopped; its log: "
                                   f"`FLWR_HOME={self.home} flwr log <run id> loopback`)")
                if record["done"]:
                    return record["history"]
            time.sleep(0.5)
        raise RunError(f"federated: the run did not finish within {timeout:.0f} s; "
                           f"see {self.logs} and `FLWR_HOME={self.home} flwr log <run id> "
                           "loopback`")

    def run(self, cfg, name: str = "run", timeout: float = 1800.0,
            on_round=None) -> list[dict]:
        return self.wait(self.submit(cfg, name), timeout, on_round)


def _said(out: subprocess.CompletedProcess) -> str:
    """The one line `flwr run --format json` gives as its error, else its last line."""
    try:
        message = json.loads(out.stdout).get("error-message")
    except (json.JSONDecodeError, AttributeError):
        message = None
    lines = [line.strip() for line in f"{out.stdout}\n{out.stderr}".splitlines() if line.strip()]
    return " ".join(str(message or (lines[-1] if lines else f"exit {out.returncode}")).split())


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):    # not written yet, or mid-write
        return None


def _kill_tree(roots: list[subprocess.Popen], sig: signal.Signals, grace: float = 10.0) -> None:
    """Signal each root's process group and every process of the roots' trees, wait up to
    `grace` s, then SIGKILL what is left. The trees are snapshotted first: Flower's
    superexecs start sessions of their own, so they are out of the roots' groups, and once
    a root is gone they are orphans no walk from it finds."""
    tree: list[psutil.Process] = []
    for root in roots:
        try:
            tree += [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for root in roots:
        if root.poll() is None:
            try:
                os.killpg(root.pid, sig)
            except ProcessLookupError:
                pass
    for proc in tree[::-1]:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    for root in roots:
        try:
            root.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def run_deployment(cfg, workdir: Path, timeout: float = 1800.0) -> list[dict]:
    """One run of the app on a fresh loopback federation of `cfg["clients"]` SuperNodes."""
    with Loopback(int(cfg["clients"]), workdir) as fed:
        return fed.run(cfg, name=str(cfg["strategy"]), timeout=timeout)
