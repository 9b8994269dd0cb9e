"""A run's confirmation: seeded retrainings of its top configs and baselines, read from their study.

``rexsearch confirm`` (:mod:`rexsearch.search.confirm`) trains them into the run's sibling
study ``<study_name>-confirm``; :class:`Confirmation` reads that study back: one row per
training, one per confirmed config (mean and spread over seeds), and the best config's
difference to each of the others with its confidence interval (:mod:`rexsearch.stats`).
:attr:`rexsearch.results.RunResults.confirmation` is the run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from rexsearch.errors import UserError
from rexsearch.rundir import RunInfo

if TYPE_CHECKING:
    import pandas as pd

#: The sibling study of a run that holds its confirmation trainings: ``<study_name>-confirm``.
CONFIRM_SUFFIX = "-confirm"


def confirm_study_name(run: RunInfo) -> str:
    return run.study_name + CONFIRM_SUFFIX


def confirm_study(run: RunInfo, create: bool = False, storage: Any = None) -> Any:
    """The run's confirmation study in the run's storage (``None`` when absent and not ``create``)."""
    import optuna

    storage = storage or run.open_storage()
    name = confirm_study_name(run)
    summaries = {s.study_name: s for s in storage.get_all_studies()}
    found = summaries.get(name)
    if found is not None and found.user_attrs.get("source_study") != run.study_name:
        # a study of that name that is not this run's confirmation (another run's study in shared
        # storage, named so): never read as this run's, never written into
        if not create:
            return None
        raise UserError(
            f"the storage already holds a study {name!r} that is not the confirmation of {run.study_name!r}; "
            "rename it (optuna's copy_study and delete_study) before confirming this run"
        )
    if not create:
        return None if found is None else optuna.load_study(study_name=name, storage=storage)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    study.set_user_attr("source_study", run.study_name)  # what marks it as this run's
    return study


@dataclass(frozen=True)
class Confirmation:
    """Seeded retrainings of a run's top configs and baselines, and the verdict they support.

    Each COMPLETE trial is one training of one config (``label``: ``trial-N`` or the
    baseline's name) with one seed; ``pick_rank`` 1 is the search's best (by ``--pick``),
    the config the verdict is about: it was chosen on the search's own training, so its
    confirmation seeds are fresh draws, not the ones it was selected on.
    """

    trials: tuple[Any, ...] = ()

    @cached_property
    def table(self) -> pd.DataFrame:
        """One row per confirmation trial: number, state, label, role, source trial, seed, accuracy."""
        import pandas as pd

        rows = []
        for t in self.trials:
            a = t.user_attrs
            rows.append(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "label": a.get("label", ""),
                    "role": a.get("role", ""),
                    "pick_rank": a.get("pick_rank"),
                    "source_trial": a.get("source_trial"),
                    "seed": a.get("seed"),
                    "epochs": a.get("epochs"),
                    "config_hash": a.get("config_hash"),
                    "macs": a.get("macs"),
                    "accuracy": t.values[0] if t.values else None,
                    "train_seconds": a.get("train_seconds"),
                    "error": a.get("error") or "",
                }
            )
        columns = ["number", "state", "label", "role", "pick_rank", "source_trial", "seed", "epochs"]
        columns += ["config_hash", "macs", "accuracy", "train_seconds", "error"]
        frame = pd.DataFrame(rows, columns=columns)
        frame["accuracy"] = pd.to_numeric(frame["accuracy"], errors="coerce").astype(float)
        return frame

    @property
    def complete(self) -> pd.DataFrame:
        t = self.table
        return t[(t["state"] == "COMPLETE") & t["accuracy"].notna()]

    def __bool__(self) -> bool:
        return not self.complete.empty

    def values(self, label: str) -> list[float]:
        c = self.complete
        return [float(v) for v in c.loc[c["label"] == label, "accuracy"]]

    @cached_property
    def summary(self) -> pd.DataFrame:
        """One row per confirmed config: label, role, pick rank, source trial, n, mean, std, MACs."""
        import pandas as pd

        from rexsearch.stats import mean, sample_std

        rows = []
        for label, group in self.complete.groupby("label", sort=False):
            values = group["accuracy"].tolist()
            first = group.iloc[0]
            rows.append(
                {
                    "label": label,
                    "role": first["role"],
                    "pick_rank": first["pick_rank"],
                    "source_trial": first["source_trial"],
                    "n": len(values),
                    "mean": mean(values),
                    "std": sample_std(values),
                    "macs": first["macs"],
                    "epochs": first["epochs"],
                    "config_hash": first["config_hash"],
                }
            )
        columns = ["label", "role", "pick_rank", "source_trial", "n", "mean", "std", "macs", "epochs"]
        columns.append("config_hash")
        frame = pd.DataFrame(rows, columns=columns)
        order = [
            (0, p or 0) if r == "searched" else (1, 0)
            for r, p in zip(frame.role, frame.pick_rank, strict=True)
        ]
        return frame.iloc[sorted(range(len(frame)), key=order.__getitem__)].reset_index(drop=True)

    @property
    def best_label(self) -> str | None:
        """The confirmed config the verdict is about: the search's best (pick rank 1)."""
        s = self.summary
        rows = s[(s["role"] == "searched")] if not s.empty else s
        if rows.empty:
            return None
        return str(rows.sort_values("pick_rank").iloc[0]["label"])

    def comparisons(self) -> list[tuple[str, Any]]:
        """``(label, Difference)`` of the best confirmed config against every other confirmed one
        (baselines first), Welch's 95% interval of the difference of mean accuracies."""
        import pandas as pd

        from rexsearch.stats import difference

        best = self.best_label
        if best is None:
            return []
        s = self.summary
        others = s[(s["label"] != best) & ~s["label"].isin(self.same_as_best())]
        others = pd.concat([others[others["role"] == "baseline"], others[others["role"] != "baseline"]])
        return [(str(x), difference(self.values(best), self.values(str(x)))) for x in others["label"]]

    def same_as_best(self) -> list[str]:
        """Other confirmed labels whose network is the best's own (the same config hash, e.g. a
        search that found a baseline's config): they are never compared with it."""
        best = self.best_label
        if best is None:
            return []
        s = self.summary
        own = s.loc[s["label"] == best, "config_hash"].iloc[0]
        if own is None or (isinstance(own, float) and own != own):
            return []
        return [str(x) for x in s.loc[(s["label"] != best) & (s["config_hash"] == own), "label"]]

    def of_trial(self, number: int) -> pd.Series | None:
        """The summary row of the config confirmed from search trial ``number``, if any."""
        s = self.summary
        rows = s[s["source_trial"] == number] if not s.empty else s
        return None if rows.empty else rows.iloc[0]
