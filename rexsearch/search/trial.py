"""The Ray worker side of a trial: fvcore check, feature rank, proxy training, reports.

:class:`TrialJob` is what every trial of a session shares (frozen, pickled once by Tune);
:func:`trial_function` is the Tune function trainable. Errors of the trial's own work are
reported as ``{"error": ...}`` (the searcher records FAIL with the message); Tune's own
control flow is never swallowed.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rexsearch.config import ReXNetConfig
from rexsearch.proxy import PROXY_RESOLUTION, proxy_config
from rexsearch.results import DEFAULT_OBJECTIVES, DEFAULT_RANK_PROTOCOL
from rexsearch.rundir import weights_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialJob:
    """The settings every trial of a session runs with."""

    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    resolution: int = 224
    seed: int = 0
    threads: int = 1
    trial_timeout: float | None = None
    rank_samples: int | None = None
    rank_protocol: str = DEFAULT_RANK_PROTOCOL
    run_dir: str | None = None
    keep_weights: bool = False
    epochs: int = 30
    batch_size: int = 128
    #: The proxy's classifier width: the data set's classes (CIFAR-100's 100 by default).
    num_classes: int = 100
    #: Where the run's latency table was measured (:class:`~rexsearch.latency.Environment` as a
    #: dict): a worker on that device and runtime measures each candidate's latency.
    latency_environment: dict[str, Any] | None = None

    @property
    def needs_training(self) -> bool:
        return "accuracy" in self.objectives


class TrialTimeoutError(RuntimeError):
    """A trial ran past ``--trial-timeout``; the search records it FAIL."""


class Deadline:
    """The wall-clock limit of one trial attempt, checked between its steps."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def check(self, where: str) -> None:
        if self.seconds is None:
            return
        elapsed = time.monotonic() - self.start
        if elapsed > self.seconds:
            raise TrialTimeoutError(
                f"the trial ran past --trial-timeout {self.seconds:g} s ({elapsed:.1f} s, stopped {where})"
            )


def trial_function(tune_config: dict[str, Any], split: Any = None, job: TrialJob | None = None) -> None:
    """One trial on a Ray worker: fvcore check, rank, proxy training; everything reported."""
    import ray
    import torch
    from ray import tune

    job = job or TrialJob()
    candidate = tune_config["candidate"]
    nan = float("nan")
    base: dict[str, Any] = {o: nan for o in job.objectives}
    base.update(epoch=0, final=False, node=ray.get_runtime_context().get_node_id())
    if "infeasible" in candidate:
        tune.report({**base, "final": True, "infeasible": candidate["infeasible"]})
        return
    torch.set_num_threads(max(1, job.threads))
    collected: dict[str, Any] = {}
    try:
        _run_trial(candidate, split, job, base, collected, Deadline(job.trial_timeout))
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):
            raise
        message = f"{type(exc).__name__}: {exc}"
        log.debug("trial failed: %s", traceback.format_exc())
        tune.report({**base, **collected, "final": True, "error": message})


def _run_trial(
    candidate: dict[str, Any],
    split: Any,
    job: TrialJob,
    base: dict[str, Any],
    collected: dict[str, Any],
    deadline: Deadline,
) -> None:
    from ray import tune

    from rexsearch.cost import measure_cost
    from rexsearch.rank import measure_rank

    seed = int(candidate.get("seed", job.seed))  # a confirmation training names its own seed
    config = ReXNetConfig.from_dict(candidate["config"])
    measured = measure_cost(config, job.resolution)
    collected["fvcore_macs"] = measured.macs
    if (measured.macs, measured.params) != (candidate["macs"], candidate["params"]):
        raise RuntimeError(
            f"fvcore measured {measured.macs:,} MACs / {measured.params:,} params, the analytic count "
            f"said {candidate['macs']:,} / {candidate['params']:,}"
        )
    deadline.check("after the fvcore count")
    if job.latency_environment is not None:
        _measure_latency(config, candidate, job, base, collected)
        deadline.check("after the latency measurement")
    proxy = proxy_config(config, num_classes=job.num_classes)
    rank_kwargs: dict[str, Any] = {"protocol": job.rank_protocol}
    if job.rank_samples:
        rank_kwargs["samples"] = job.rank_samples
    rank = measure_rank(proxy, resolution=PROXY_RESOLUTION, seed=seed, **rank_kwargs)
    collected.update(
        rank_value=rank.rank,
        rank_per_layer=[layer.to_dict() for layer in rank.per_layer],
        nuclear_norm=rank.nuclear_norm,
    )
    deadline.check("after the rank measurement")
    out = {**base, "rank": rank.rank, **collected}
    if not job.needs_training:
        tune.report({**out, "final": True})
        return
    from rexsearch.train import TrainSettings, train_proxy

    settings = TrainSettings(epochs=job.epochs, batch_size=job.batch_size, seed=seed)
    curve: list[float] = []

    def on_epoch(m: Any) -> None:
        curve.append(m.val_top1)
        if m.epoch < settings.epochs:  # epochs count from 1; the last one is reported below
            tune.report(
                {
                    **out,
                    "epoch": m.epoch,
                    "accuracy": m.val_top1,
                    "train_loss": m.train_loss,
                    "accuracy_curve": list(curve),
                }
            )

    def on_step(step: int, total: int) -> None:
        deadline.check(f"at training step {step} of {total}")

    result = train_proxy(config, split, settings, callback=on_epoch, progress=on_step)
    if job.keep_weights and job.run_dir:
        from rexsearch.checkpoints import save_weights

        path = Path(weights_path(job.run_dir, candidate["number"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(result.model, proxy_config(config, settings.resolution, job.num_classes), path)
    tune.report(
        {
            **out,
            "epoch": len(result.accuracy_curve),
            "accuracy": result.final_accuracy,
            "accuracy_curve": list(result.accuracy_curve),
            "train_seconds": result.train_seconds,
            "images_per_s": result.images_per_s,
            "final": True,
        }
    )


def _measure_latency(
    config: ReXNetConfig,
    candidate: dict[str, Any],
    job: TrialJob,
    base: dict[str, Any],
    collected: dict[str, Any],
) -> None:
    """Time the target network when this worker is the table's device and runtime (a few runs, the
    table's threads); the ``latency`` objective is the measurement, else the prediction."""
    from rexsearch.latency import Environment, measure_for_trial

    measured, note = measure_for_trial(config, job.resolution, Environment.from_dict(job.latency_environment))
    collected["latency_note"] = note
    if measured is not None:
        collected["latency_measured_ms"] = measured
    value = measured if measured is not None else candidate.get("latency_ms")
    if value is not None:
        base["latency"] = float(value)
