"""Latency on the deployment device: end-to-end measurement, a per-operator lookup table, a predictor.

Modules (docs/architecture.md, "Latency"):

* :mod:`~rexsearch.latency.device` — where a latency is measured (:class:`Environment`), how
  a network runs in each runtime, :func:`measure_latency`; every runtime difference is there;
* :mod:`~rexsearch.latency.ops` — a network's operators and segments, the keys a table is
  looked up by, their weights and ONNX Runtime's layout conversions;
* :mod:`~rexsearch.latency.correction` — what the sum of the operators misses, fitted on
  whole networks;
* :mod:`~rexsearch.latency.table` — :class:`LatencyTable` and its prediction, loading and
  checking a table against this machine;
* :mod:`~rexsearch.latency.margin` — the latency budget and its margins (auto, measured);
* :mod:`~rexsearch.latency.build` — building a table on the device, and its drift since.

A :class:`LatencyTable` is the :class:`rexsearch.space.LatencyPredictor` a latency budget
uses; this package imports :mod:`rexsearch.space`, never the other way round.
"""

from __future__ import annotations

from rexsearch.errors import LatencyTableError
from rexsearch.latency.build import (
    DRIFT_NETWORKS,
    SE_RATIOS,
    Drift,
    InContext,
    OperatorTimer,
    Progress,
    build_table,
    check_drift,
    in_context_ms,
    table_families,
)
from rexsearch.latency.correction import (
    CORRECTIONS,
    MIN_KIND_CALIBRATION,
    MIN_WEIGHTS_CALIBRATION,
    Correction,
    fit_correction,
    fit_kind_correction,
    fit_table_correction,
    fit_terms,
)
from rexsearch.latency.device import (
    DEVICES,
    REORDERS,
    RUNTIMES,
    Environment,
    Latency,
    environment,
    fold_batchnorm,
    measure_latency,
    node_times,
    probe_blocked_alignment,
    probe_plain_input_below,
    profiles_nodes,
    run_overhead_ms,
    runner,
    runtime_versions,
    time_samples,
    torch_threads,
)
from rexsearch.latency.margin import (
    AUTO_MARGIN_SHARE,
    MEASURED_MARGIN_CANDIDATES,
    MIN_AUTO_MARGIN_CALIBRATION,
    MeasuredMargin,
    auto_margin,
    conformal_margin,
    held_out_ratios,
    measured_margin,
    parse_latency_budget,
)
from rexsearch.latency.ops import (
    ACT_CONTEXTS,
    BLOCKED,
    KINDS,
    PLAIN_ACTIVATIONS,
    PLAIN_INPUT_BELOW,
    Op,
    config_ops,
    config_segments,
    op_weights,
    segment_conversions,
)
from rexsearch.latency.table import (
    TABLE_FORMAT,
    TRIAL_REPEATS,
    TRIAL_WARMUP,
    Family,
    LatencyTable,
    channel_grid,
    check_table_here,
    here_for,
    load_table,
    measure_for_trial,
    monotone_envelope,
)

__all__ = [
    "ACT_CONTEXTS",
    "AUTO_MARGIN_SHARE",
    "BLOCKED",
    "CORRECTIONS",
    "DEVICES",
    "DRIFT_NETWORKS",
    "KINDS",
    "MEASURED_MARGIN_CANDIDATES",
    "MIN_AUTO_MARGIN_CALIBRATION",
    "MIN_KIND_CALIBRATION",
    "MIN_WEIGHTS_CALIBRATION",
    "PLAIN_ACTIVATIONS",
    "PLAIN_INPUT_BELOW",
    "REORDERS",
    "RUNTIMES",
    "SE_RATIOS",
    "TABLE_FORMAT",
    "TRIAL_REPEATS",
    "TRIAL_WARMUP",
    "Correction",
    "Drift",
    "Environment",
    "Family",
    "InContext",
    "Latency",
    "LatencyTable",
    "LatencyTableError",
    "MeasuredMargin",
    "Op",
    "OperatorTimer",
    "Progress",
    "auto_margin",
    "build_table",
    "channel_grid",
    "check_drift",
    "check_table_here",
    "config_ops",
    "config_segments",
    "conformal_margin",
    "environment",
    "fit_correction",
    "fit_kind_correction",
    "fit_table_correction",
    "fit_terms",
    "fold_batchnorm",
    "held_out_ratios",
    "here_for",
    "in_context_ms",
    "load_table",
    "measure_for_trial",
    "measure_latency",
    "measured_margin",
    "monotone_envelope",
    "node_times",
    "op_weights",
    "parse_latency_budget",
    "probe_blocked_alignment",
    "probe_plain_input_below",
    "profiles_nodes",
    "run_overhead_ms",
    "runner",
    "runtime_versions",
    "segment_conversions",
    "table_families",
    "time_samples",
    "torch_threads",
]
