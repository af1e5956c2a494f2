"""``ray job submit --working-dir . -- python -m jobs.train_rfnet ...`` against a ``ray start --head`` cluster.

The cluster is this test's own: explicit free ports, its own short ``--temp-dir``, token authentication
with a token made here, started with ``--block`` in a new session so the test ends exactly the
processes it started (its process group, then any process still naming its temp dir), never ``ray stop``
(which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from rfnet.synth import generate_rf1m
from tests.cluster.local_cluster import BIN, free_ports, pids_naming

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def ray_head(env: dict[str, str]):
    temp_dir = tempfile.mkdtemp(prefix="adl-rf-", dir="/tmp")  # short: Ray's unix socket paths must fit
    gcs, dash, client, agent, agent_grpc, rt_agent, metrics, nm, om = free_ports(9)
    cmd = [
        os.path.join(BIN, "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--include-dashboard", "true",
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(rt_agent),
        "--metrics-export-port", str(metrics), "--node-manager-port", str(nm), "--object-manager-port", str(om),
        "--num-cpus", "2", "--temp-dir", temp_dir, "--disable-usage-stats",
    ]  # fmt: skip
    log = open(os.path.join(temp_dir, "ray_start.log"), "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            probe = subprocess.run([os.path.join(BIN, "ray"), "job", "list", "--address", address],
                                   env=env, capture_output=True, text=True)  # fmt: skip
            if probe.returncode == 0:
                break
            if head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed: {open(log.name).read()[-3000:]}\n{probe.stderr[-2000:]}")
            time.sleep(2)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=30)
        for pid in pids_naming(temp_dir):  # workers that left the group but still belong to this cluster
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        log.close()


def test_train_rfnet_via_ray_job_submit(tmp_path):
    # One worker: the cluster's 2 CPUs are the worker's and the decode tasks'.
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    generate_rf1m(data, 64, seed=1, size=32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
            "PATH": BIN + os.pathsep + env.get("PATH", ""), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}  # fmt: skip
    with ray_head(env) as address:
        job = subprocess.run(
            [os.path.join(BIN, "ray"), "job", "submit", "--address", address, "--working-dir", ROOT, "--",
             "python", "-m", "jobs.train_rfnet", "--data", data, "--out", out, "--image-size", "32",
             "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "2", "--workers", "1"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "succeeded" in job.stdout.lower()
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["test"]["n"] > 0 and os.path.isfile(os.path.join(out, "rfnet", "model.safetensors"))


@pytest.mark.parametrize("n", [3])
def test_free_ports_are_distinct(n):
    assert len(set(free_ports(n))) == n
