"""A multi-node Ray cluster on one machine: a head and worker nodes as separate ``ray start`` processes.

Tests and ``bench/cluster_scale.py`` use it to run the real jobs across several Ray nodes (each with its own
raylet, object store and resources) and to lose a node in the middle of a job. Everything binds to
127.0.0.1 on explicit free ports, each node has its own short ``--temp-dir``, and every node is started
with ``--block`` in a new session, so ``kill_node`` and ``stop`` end exactly the processes this cluster
started (the node's process group, then any process still naming its temp dir) and never call
``ray stop``, which would stop every Ray instance on the machine.

Authentication: Ray 2.60 turns token auth on for clusters started from Python. The nodes run with
``RAY_AUTH_MODE=token`` and the token from the environment or the user's default token file, the same
one an in-process ``ray.init`` uses, so a test's driver and ``ray job submit`` can both connect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

BIN = os.path.dirname(sys.executable)
LOOPBACK = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((LOOPBACK, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment nodes, drivers and ``ray job submit`` share: token auth, no inherited address."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {
        "RAY_AUTH_MODE": "token",
        "PATH": BIN + os.pathsep + env.get("PATH", ""),
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Node loss is noticed after ~5 missed health checks; the default (30 s) would dominate a test.
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "5",
    }
    return env | (extra or {})


@dataclass
class Node:
    name: str
    num_cpus: int
    temp_dir: str
    node_manager_port: int
    process: subprocess.Popen | None = None
    log_path: str = ""
    lost: bool = False
    """Killed on purpose by ``kill_node``: its exit is expected, not a start-up failure."""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    """A head plus worker nodes on 127.0.0.1.

    Use as a context manager (starts every node, stops them on exit)::

        with LocalCluster(head_cpus=1, worker_cpus=[2, 2]) as c:
            ray.init(address=c.address)   # or: ray job submit --address c.dashboard_url ...
            c.kill_node(c.workers[0])     # node loss: SIGKILL of its raylet and workers
    """

    head_cpus: int = 1
    """Logical CPUs of the head node (the driver attaches there; 0 keeps all work on the workers)."""
    worker_cpus: list[int] = field(default_factory=lambda: [2, 2])
    """Logical CPUs of each worker node; one node per entry."""
    object_store_mb: int = 300
    """Object store per node (MiB); small, several nodes share this machine's memory."""
    dashboard: bool = True
    """Start the dashboard on the head (needed for ``ray job submit``)."""
    env: dict[str, str] = field(default_factory=cluster_env)
    head: Node | None = None
    workers: list[Node] = field(default_factory=list)
    address: str = ""
    """GCS address (``ray.init(address=...)``)."""
    dashboard_url: str = ""
    """``http://127.0.0.1:PORT`` (``ray job submit --address ...``)."""

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ start

    def start(self, timeout: float = 180, attempts: int = 3) -> None:
        """Start the head and the workers; wait until all are alive (and the dashboard answers).

        Ray gives a starting node 30 s to register (hard-coded); on a machine this loaded that can pass,
        and the node exits. Then the whole cluster is started again, up to ``attempts`` times.
        """
        for attempt in range(1, attempts + 1):
            try:
                self._start_all(timeout)
                return
            except RuntimeError as err:
                self.stop()
                self.head, self.workers = None, []
                if attempt == attempts:
                    raise
                logger.warning("cluster start failed (attempt %d of %d), starting again: %s", attempt, attempts, err)

    def _start_all(self, timeout: float) -> None:
        from ray._private.services import resolve_ip_for_localhost

        _use_token_auth()
        gcs, dash, client = free_ports(3)
        # Ray itself maps a loopback --node-ip-address to the host's own address (nodes must reach each other
        # by it); the GCS is advertised there, so that is the address to join.
        self.address = f"{resolve_ip_for_localhost(LOOPBACK)}:{gcs}"
        self.dashboard_url = f"http://{LOOPBACK}:{dash}"
        self.head = self._start_node(
            "head",
            self.head_cpus,
            [
                "--head", "--port", str(gcs), "--ray-client-server-port", str(client),
                "--include-dashboard", "true" if self.dashboard else "false",
                "--dashboard-host", LOOPBACK, "--dashboard-port", str(dash),
            ],
        )  # fmt: skip
        self._wait_nodes(1, timeout)
        for i, cpus in enumerate(self.worker_cpus):
            self.add_worker(cpus, name=f"worker{i + 1}", wait=False)
        self._wait_nodes(1 + len(self.workers), timeout)
        if self.dashboard:
            self._wait_dashboard(timeout)

    def add_worker(self, num_cpus: int, name: str | None = None, wait: bool = True, timeout: float = 120) -> Node:
        """Start one more worker node (what an autoscaler or KubeRay does after a node is lost)."""
        name = name or f"worker{len(self.workers) + 1}"
        for attempt in range(3):
            node = self._start_node(name, num_cpus, ["--address", self.address])
            self.workers.append(node)
            if not wait:
                return node
            try:
                self._wait_nodes(1 + sum(w.alive for w in self.workers), timeout)
                return node
            except RuntimeError:  # it missed Ray's 30 s registration window: try again
                self.workers.remove(node)
                _kill_group(node, signal.SIGKILL)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_node(self, name: str, num_cpus: int, args: list[str]) -> Node:
        # Short: Ray's unix socket paths under the temp dir must fit in 107 bytes.
        temp_dir = tempfile.mkdtemp(prefix=f"adl-{name[:2]}{name[-1]}-", dir="/tmp")
        agent, agent_grpc, rt_agent, metrics, nm, om = free_ports(6)
        cmd = [
            os.path.join(BIN, "ray"), "start", "--block", *args, "--node-ip-address", LOOPBACK,
            "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--object-store-memory", str(self.object_store_mb * 1024 * 1024),
            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(rt_agent), "--metrics-export-port", str(metrics),
            "--node-manager-port", str(nm), "--object-manager-port", str(om),
            "--temp-dir", temp_dir, "--disable-usage-stats",
        ]  # fmt: skip
        log_path = os.path.join(temp_dir, "ray_start.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        logger.info("started %s (pid %d, %d CPU, temp dir %s)", name, process.pid, num_cpus, temp_dir)
        return Node(name, num_cpus, temp_dir, nm, process, log_path)

    def _wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            alive = self.alive_nodes()
            if alive is not None and alive >= n:
                return
            for node in [self.head, *self.workers]:
                if node is not None and not node.lost and node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited: {_tail(node.log_path)}")
            if time.time() > deadline:
                raise RuntimeError(f"only {alive} of {n} Ray nodes came up in {timeout:.0f} s")
            time.sleep(1)

    def alive_nodes(self) -> int | None:
        """How many nodes the GCS reports alive (``None`` while the GCS does not answer)."""
        from ray._raylet import GcsClient

        try:
            infos = GcsClient(address=self.address).get_all_node_info(timeout=5)
        except Exception:
            return None
        return sum(1 for info in infos.values() if info.state == 0)  # 0 = ALIVE

    def node_ids(self) -> dict[str, str]:
        """Ray node id (hex) of each node started here that the GCS reports alive, by node name."""
        from ray._raylet import GcsClient

        infos = GcsClient(address=self.address).get_all_node_info(timeout=10)
        by_port = {info.node_manager_port: node_id.hex() for node_id, info in infos.items() if info.state == 0}
        return {
            n.name: by_port[n.node_manager_port] for n in [self.head, *self.workers] if n.node_manager_port in by_port
        }

    def node_named(self, node_id: str) -> Node:
        """The node started here that has Ray node id ``node_id``."""
        names = {v: k for k, v in self.node_ids().items()}
        return next(n for n in [self.head, *self.workers] if n.name == names[node_id])

    def runs(self, node: Node, marker: str) -> bool:
        """Whether a worker process of ``node`` (a child of its raylet) has ``marker`` in its title, e.g. the
        Ray Data actor ``ray::MapWorker(MapBatches(GenerateCandidates))``. Read from /proc: no Ray API."""
        raylets = {pid for pid in pids_naming(node.temp_dir) if b"/raylet/raylet" in _cmdline(pid)}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and marker.encode() in _cmdline(int(entry)) and _ppid(int(entry)) in raylets:
                return True
        return False

    def _wait_dashboard(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            probe = subprocess.run(
                [os.path.join(BIN, "ray"), "job", "list", "--address", self.dashboard_url],
                env=self.env, capture_output=True, text=True,
            )  # fmt: skip
            if probe.returncode == 0:
                return
            if time.time() > deadline:
                raise RuntimeError(f"the dashboard did not answer: {probe.stderr[-2000:]}")
            time.sleep(2)

    # ---------------------------------------------------------------------------------- loss and stop

    def kill_node(self, node: Node) -> None:
        """Lose ``node`` at once: SIGKILL its raylet, agents and worker processes (no graceful drain)."""
        node.lost = True
        _kill_group(node, signal.SIGKILL)
        logger.info("killed %s", node.name)

    def stop(self) -> None:
        """End every process this cluster started, workers first; remove the temp dirs."""
        for node in [*reversed(self.workers), self.head]:
            if node is None:
                continue
            _kill_group(node, signal.SIGTERM, wait=10)
            _kill_group(node, signal.SIGKILL)
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def _use_token_auth() -> None:
    """Put this process in token mode, as an in-process ``ray.init`` would, so its GCS queries authenticate."""
    from ray._raylet import Config

    if os.environ.get("RAY_AUTH_MODE") != "token":
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")


def _kill_group(node: Node, sig: int, wait: float = 0) -> None:
    if node.process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.process.pid, sig)
    if wait:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=wait)
    # Workers the raylet spawned may have left the group; they still name the node's temp dir.
    for pid in pids_naming(node.temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=10)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def pids_naming(marker: str) -> list[int]:
    """PIDs (other than ours) whose command line contains ``marker``, e.g. a cluster's temp dir."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path) as f:
            return f.read()[-n:]
    except OSError:
        return ""
