"""The calibration networks (rexsearch.space.calibration) a latency table's correction is fitted on."""

from __future__ import annotations

from rexsearch.space import calibration_networks


def test_calibration_networks_are_decoded_candidates_of_every_space():
    from rexsearch.cost import count_cost

    nets = calibration_networks(18, resolution=112)
    assert nets == calibration_networks(18, resolution=112)  # deterministic
    assert len(nets) == 18 and len({n.to_json() for n in nets}) == 18
    macs = [count_cost(n, resolution=112).macs for n in nets]
    # the 224 range scaled by the area, each within the decoder's 3% window below its budget
    assert min(macs) >= 0.97 * 25e6 and max(macs) <= 300e6
    assert len({len(n.blocks) for n in nets}) >= 3  # drawn from the spaces in turn: several depths
