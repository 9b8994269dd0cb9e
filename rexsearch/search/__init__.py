"""The search: Ray Tune runs proxy trials, Optuna (RDB storage) chooses them.

Data flow: a space's variables are drawn by Optuna's sampler through a picklable
define-by-run object (:class:`~rexsearch.search.study.TrialDecoder`), decoded into a config
inside the budget, evaluated by :func:`~rexsearch.search.trial.trial_function` on a Ray
worker (fvcore check, feature rank, proxy training), and told back to the study by
:class:`~rexsearch.search.tune.StudySearcher`, which records the trial's measurements,
constraints and final state (:mod:`rexsearch.results` defines the record):

* COMPLETE — all epochs trained (or the rank measured, for ``--objectives rank``);
* PRUNED — stopped early by the ASHA scheduler (multi-fidelity), or infeasible;
* FAIL — an exception, a non-finite loss, a dead worker (out of memory), or an
  interruption (Ctrl-C, a killed driver); interrupted trials are rerun by ``resume``.

Modules: ``settings`` (what a run is asked to do, run.json), ``study`` (Optuna: sampler,
study, baselines, decoding, outcomes), ``trial`` (the Ray worker side), ``tune`` (Ray Tune
glue and the live view), ``cluster`` (starting/joining Ray, resource checks), ``run``
(:func:`execute`).
"""

from rexsearch.search.cluster import (
    Resources,
    check_cluster,
    check_resources,
    cluster_resources,
    default_resources,
    ensure_ray,
)
from rexsearch.search.run import (
    SearchOutcome,
    concurrent_trials,
    estimate_training_seconds,
    execute,
    load_split,
)
from rexsearch.search.settings import SAMPLERS, SearchSettings, begin_run, settings_from_run, start_run
from rexsearch.search.study import TrialDecoder, check_resumable, prepare_resume, record_outcome, session_seed
from rexsearch.search.trial import Deadline, TrialJob, TrialTimeoutError, trial_function
from rexsearch.search.tune import LiveView, Progress, trial_error_message

__all__ = [
    "SAMPLERS",
    "Deadline",
    "LiveView",
    "Progress",
    "Resources",
    "SearchOutcome",
    "SearchSettings",
    "TrialDecoder",
    "TrialJob",
    "TrialTimeoutError",
    "begin_run",
    "check_cluster",
    "check_resources",
    "check_resumable",
    "cluster_resources",
    "concurrent_trials",
    "default_resources",
    "ensure_ray",
    "estimate_training_seconds",
    "execute",
    "load_split",
    "prepare_resume",
    "record_outcome",
    "session_seed",
    "settings_from_run",
    "start_run",
    "trial_error_message",
    "trial_function",
]
