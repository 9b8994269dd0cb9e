"""Measurements from the project's committed studies that reports quote, each with where it was
measured. The numbers are copies of ``reports/fidelity/agreement.json`` (rounded to 3 places; a
test checks that they match), so a report built anywhere can say what the study found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tau:
    """Kendall's tau with its 95% bootstrap interval (over networks)."""

    tau: float
    low: float
    high: float

    def text(self, signed: bool = False) -> str:
        fmt = "{:+.2f}" if signed else "{:.2f}"
        return f"{fmt.format(self.tau)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


#: ``benchmarks/bench_fidelity.py --out reports/fidelity``: 30 uniform draws of rexnet.yaml at
#: 100M MACs plus the two baselines, each trained at the proxy fidelity (3 epochs on 5,000
#: images, seeds 0 and 1) and for 1 epoch on all 60,000 training images (test-set top-1).
#: Keys are agreement.json's ``predictor`` names; the taus are against the long training.
FIDELITY_STUDY: dict[str, Any] = {
    "source": "reports/fidelity",
    "dataset": "fashion-mnist",
    "title": "Fashion-MNIST",
    "networks": 32,
    "budget": "100M MACs",
    "proxy": "3 epochs on 5,000 images",
    "long": "1 epoch on all 60,000 training images",
    "tau": {
        "proxy_one_seed": Tau(0.349, 0.129, 0.556),
        "rank": Tau(0.248, -0.064, 0.543),
        "nuclear_norm": Tau(0.285, 0.017, 0.534),
        "params": Tau(0.002, -0.261, 0.232),
        "macs": Tau(0.087, -0.190, 0.347),
        "rank-minus-params": Tau(0.246, -0.175, 0.665),
        "rank-minus-macs": Tau(0.161, -0.200, 0.545),
        "proxy_seed_to_seed": Tau(0.488, 0.255, 0.677),
    },
}


def fidelity_evidence(run_dataset: str | None) -> str:
    """One paragraph: what the fidelity study found about the rank objective, naming its data
    set and saying when that is not the data set of the run the text is shown with."""
    s = FIDELITY_STUDY
    tau: dict[str, Tau] = s["tau"]
    where = (
        s["title"]
        if run_dataset == s["dataset"]
        else f"{s['title']}; this run trained on no data"
        if run_dataset is None
        else f"{s['title']}, not this run's data set"
    )
    return (
        f"Evidence from real images ({where}; {s['source']} in the rexsearch repository): over "
        f"{s['networks']} networks at {s['budget']}, against {s['long']}, the rank objective ranked "
        f"networks at Kendall tau {tau['rank'].text()}, params at {tau['params'].text()}, MACs at "
        f"{tau['macs'].text()} and one proxy training ({s['proxy']}) at "
        f"{tau['proxy_one_seed'].text()} (the seed-to-seed ceiling: {tau['proxy_seed_to_seed'].text()}). "
        f"Rank minus params: {tau['rank-minus-params'].text(signed=True)}, rank minus MACs: "
        f"{tau['rank-minus-macs'].text(signed=True)}. Rank did not beat params or MACs beyond noise "
        "there, so rexsearch optimises proxy accuracy alone by default (--objectives accuracy)."
    )
