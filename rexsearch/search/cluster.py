"""Ray: starting or joining a cluster, checking what it can run, and the hints for its traps.

Nothing outside :mod:`rexsearch.search` imports Ray; the driver calls :func:`ensure_ray`
once, then :func:`cluster_resources` for the per-trial request it will make.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rexsearch.errors import UserError
from rexsearch.search.settings import SearchSettings

#: Environment of every trial worker (and of the driver, set before torch loads): OpenMP threads
#: sleep at once when they run out of work instead of spinning first. Spinning threads of two
#: trials (or of a trial and another job) on the same cores starve each other: measured with
#: benchmarks/bench_contention.py (README, "Trials under CPU contention"). A value the user
#: exported is kept.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def worker_env() -> dict[str, str]:
    """:data:`WORKER_ENV` with the user's own values taking precedence."""
    return {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}


def auth_hint() -> str:
    return (
        f"the driver's RAY_AUTH_MODE (here: {os.environ.get('RAY_AUTH_MODE', 'unset')}) must match the "
        "one `ray start` ran with on every node (Ray 2.60 defaults to token auth, with the token in "
        "~/.ray/auth_token); export the same RAY_AUTH_MODE (and token) everywhere"
    )


def is_auth_error(message: str) -> bool:
    lowered = message.lower()
    return any(k in lowered for k in ("authorization header", "invalidauthtoken", "authentication token"))


def package_home() -> Path:
    """The folder that holds the ``rexsearch`` package this process imported."""
    import rexsearch

    return Path(rexsearch.__file__).resolve().parent.parent


@contextlib.contextmanager
def _in_package_home() -> Iterator[None]:
    """Run the body with :func:`package_home` as the working directory, then go back.

    ``ray.init`` puts the driver's working directory on every worker's ``sys.path``: a folder
    named ``rexsearch`` there (the clone's own folder, seen from the folder that holds it) would
    be imported by the workers as an empty namespace package instead of the installed one, and
    every trial would die. From the package's own home, the workers import what the driver did.
    """
    here = os.getcwd()
    os.chdir(package_home())
    try:
        yield
    finally:
        os.chdir(here)


def ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), reuse a running Ray, or start a local one.

    Returns True when this call started Ray (so the caller shuts it down again).
    """
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if address or joins_local_cluster():
        # a cluster's workers do not inherit this process's environment
        kwargs["runtime_env"] = {"env_vars": worker_env()}
    else:
        # a local Ray started here does: its prestarted workers then serve the trial actors,
        # about 1 s sooner each than workers started for a runtime_env
        os.environ.update(worker_env())
    if address:
        check_reachable(address)
    try:
        with _in_package_home():
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "a local Ray"
        hint = (
            f"; if a Ray head runs there, {auth_hint()}"
            if address and isinstance(exc, ConnectionError)
            else ""
        )
        raise UserError(f"cannot start or join Ray ({where}): {exc}{hint}") from None
    return True


def joins_local_cluster() -> bool:
    """Whether ``ray.init()`` without an address would join a Ray started by ``ray start`` here
    (True when that cannot be told)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(None) is not None
    except Exception:  # a private helper: assume a cluster, which only costs the runtime_env
        return True


def check_reachable(address: str) -> None:
    """Fail at once when nothing listens at a HOST:PORT address (ray.init would retry for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", "local" and ray:// client addresses are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"cannot join Ray at {address}: nothing answers there ({exc.strerror or exc}); start the "
            f"head with `ray start --head --port {port}` there, or fix --address / RAY_ADDRESS"
        ) from None


def check_resources(cpus: float, gpus: float) -> dict[str, float]:
    """Refuse per-trial requests that no node can satisfy (Tune would wait forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    best_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    best_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    fits = any(n.get("CPU", 0.0) >= cpus and n.get("GPU", 0.0) >= gpus for n in nodes)
    if not fits:
        raise UserError(
            f"no Ray node can run a trial with {cpus:g} CPU and {gpus:g} GPU (the largest node has "
            f"{best_cpu:g} CPU and {best_gpu:g} GPU); lower --cpus-per-trial/--gpus-per-trial"
        )
    total = ray.cluster_resources()
    slots = sum(_node_slots(n.get("CPU", 0.0), n.get("GPU", 0.0), cpus, gpus) for n in nodes)
    return {
        "CPU": total.get("CPU", 0.0),
        "GPU": total.get("GPU", 0.0),
        "nodes": float(len(nodes)),
        "slots": float(slots),
    }


def _node_slots(node_cpus: float, node_gpus: float, cpus: float, gpus: float) -> int:
    """How many trials of ``cpus`` CPU and ``gpus`` GPU one node runs at once."""
    fits = [node_cpus / cpus] if cpus > 0 else []
    if gpus > 0:
        fits.append(node_gpus / gpus)
    return math.floor(min(fits) + 1e-9) if fits else 1


def check_cluster(settings: SearchSettings, nodes: int) -> None:
    """A cluster of several nodes needs ``--storage-path`` on storage every node reaches."""
    if nodes > 1 and not settings.storage_path:
        raise UserError(
            f"this Ray cluster has {nodes} nodes, so Ray Tune's experiment folder must be on storage "
            "every node can write: pass --storage-path with a shared path (an NFS mount present at "
            "the same path on every node) or a URI such as s3://bucket/prefix"
        )


def default_resources(settings: SearchSettings) -> tuple[float, float]:
    """Per-trial CPUs and GPUs: the flags, or what the cluster suggests."""
    import ray

    total = ray.cluster_resources()
    gpus_total = total.get("GPU", 0.0)
    gpus = settings.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if gpus_total else 0.0
    cpus = settings.cpus_per_trial
    if cpus is None:
        if gpus:
            cpus = max(1.0, math.floor(total.get("CPU", 1.0) / max(1.0, gpus_total / gpus)))
        else:
            cpus = max(1.0, min(total.get("CPU", 1.0), 2.0))
    return cpus, gpus


@dataclass(frozen=True)
class Resources:
    """What one trial asks for and what the cluster has, checked once per session."""

    cpus_per_trial: float
    gpus_per_trial: float
    cpus: float
    gpus: float
    nodes: int
    node_slots: int = 0  # trials that fit at once, node by node (0: not counted, see slots)

    @property
    def slots(self) -> int:
        """How many trials the cluster runs at once (at least one): counted node by node when
        known, else from the cluster's totals."""
        if self.node_slots > 0:
            return self.node_slots
        return max(1, _node_slots(self.cpus, self.gpus, self.cpus_per_trial, self.gpus_per_trial))


def cluster_resources(settings: SearchSettings) -> Resources:
    """The per-trial request (flags or defaults), refused when no node or setup can run it."""
    cpus, gpus = default_resources(settings)
    table = settings.budget.latency_table
    if table is not None and table.environment.threads > max(1.0, cpus):
        raise UserError(
            f"the latency table was measured with {table.environment.threads} threads, but a trial gets "
            f"{cpus:g} CPU; pass --cpus-per-trial {table.environment.threads} or build a table with "
            f"--threads {max(1, int(cpus))}"
        )
    total = check_resources(cpus, gpus)
    nodes = int(total["nodes"])
    check_cluster(settings, nodes)
    return Resources(cpus, gpus, total["CPU"], total["GPU"], nodes, int(total.get("slots", 0)))
