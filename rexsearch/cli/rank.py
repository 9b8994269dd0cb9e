"""`rexsearch rank` and `rexsearch rank-study`."""

from __future__ import annotations

import argparse
import sys
import time

from rexsearch.cli import command_help
from rexsearch.cli.common import add_config_source, load_config_source, positive_int, print_json, print_table
from rexsearch.cost import check_memory
from rexsearch.proxy import PROXY_RESOLUTION, proxy_config
from rexsearch.rank import DEFAULT_RANK_PROTOCOL, DEFAULT_SAMPLES, RANK_PROTOCOLS, RTOL, measure_rank
from rexsearch.rank_study import (
    DEFAULT_PROTOCOL,
    PAPER_NETWORKS,
    PAPER_RTOL,
    PROTOCOLS,
    QUICK_NETWORKS,
    STUDY_NETWORKS,
    check_out,
    run_channel_study,
    run_rank_study,
    write_channel_study,
    write_rank_study,
)

#: The CIFAR proxy rule applies by default up to this resolution.
PROXY_MAX_RESOLUTION = 64


def _rtol(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank",
        help=command_help("rank"),
        description="Feed random images through a freshly initialised network and report the "
        "normalized rank of every expand layer's feature, the rank objective (their mean) and "
        "the nuclear norm of the pooled penultimate feature. "
        + "; ".join(f"--protocol {name}: {text}" for name, text in RANK_PROTOCOLS.items())
        + f". The default ({DEFAULT_RANK_PROTOCOL}) is the protocol whose rank correlated better "
        "with proxy accuracy (benchmarks/bench_rank_protocols.py).",
    )
    add_config_source(p)
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=PROXY_RESOLUTION,
        help=f"input size (default {PROXY_RESOLUTION})",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=DEFAULT_SAMPLES,
        help=f"random images (default {DEFAULT_SAMPLES})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights, inputs and row sampling")
    p.add_argument(
        "--proxy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the CIFAR proxy of the config "
        f"(default: yes when resolution <= {PROXY_MAX_RESOLUTION})",
    )
    p.add_argument(
        "--protocol",
        choices=tuple(RANK_PROTOCOLS),
        default=DEFAULT_RANK_PROTOCOL,
        help=f"how the network is measured (default {DEFAULT_RANK_PROTOCOL})",
    )
    p.add_argument(
        "--rtol",
        type=_rtol,
        default=None,
        help="relative singular-value tolerance; 0 gives the strict numerical rank "
        f"(default: {RTOL} for batchnorm, 0 for paper)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_rank)

    p = sub.add_parser(
        "rank-study",
        help=command_help("rank-study"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""The ReXNet paper's random-network rank studies.

--study blocks (default): rank of the output of random single-block networks (single 1x1
conv, single 3x3 conv, inverted bottleneck with a 3x3 conv or a 3x3 depthwise conv; eight
nonlinearities; d_in/d_out 0.1 .. 1.0), averaged over random-sized networks per point.
Writes DIR/rank_study_PROTOCOL.csv and .html.

--study channels: random L-layer networks of 1x1 convs growing from d_out/10 to d_out
channels in k equal steps at random layers (the other layers keep the width, ReLU);
rank of the final feature against k = 1..L for L = 2, 4, 8, 12, with SiLU or ReLU after
the expand layers. Writes DIR/channel_study_PROTOCOL.csv and .html.

--protocol paper (default), the setting the paper's Figure 1 implies:
  inputs      N = d_out + 1 rows, entries 1.2 * |N(0, 1)| (half-normal, non-negative),
              1x1 spatial size (a 3x3 conv acts through its centre tap, a depthwise conv
              is a per-channel scale)
  d_out       uniform in 16..128 (16..64 with --quick); d_in = round(ratio * d_out)
  weights     standard normal (torch.randn), biases U(+-1/sqrt(fan_in)) (PyTorch's default);
              in the channel study weights are scaled by 1/sqrt(fan_in)
  BatchNorm   a fresh layer in eval mode: the identity
  bottleneck  expansion 2, nonlinearity after the expansion and the 3x3 conv, linear
              projection, input added to the first d_in output channels
  rank        numerical rank of the float32 output at one relative tolerance, 3.1e-5
              (258 * eps: torch.linalg.matrix_rank's default, sigma_max * max(M, C) * eps,
              for a 258 x 256 matrix), used at every size
  (the input distribution, d_out range, N and tolerance came closest to the paper's
  read-offs in a sweep: reports/rank-study/README.md)
--protocol batchnorm, the earlier setting: one Gaussian S x S image (S = ceil(sqrt(2 d_out))),
  fan-scaled Gaussian weights, BatchNorm on batch statistics before every nonlinearity,
  d_out 64..256, expansion 6, rank at relative tolerance 0.03 on 2 d_out rows.""",
    )
    p.add_argument(
        "--study", choices=("blocks", "channels"), default="blocks", help="which study (default blocks)"
    )
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=DEFAULT_PROTOCOL, help="default paper")
    p.add_argument("--quick", action="store_true", help="a small study (seconds), for checks")
    p.add_argument(
        "--networks",
        type=positive_int,
        default=None,
        help=f"random networks per point (default {PAPER_NETWORKS}, the paper's, for the block study "
        f"under --protocol paper, else {STUDY_NETWORKS}; with --quick {QUICK_NETWORKS})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--rtol",
        type=_rtol,
        default=None,
        help=f"rank tolerance (default: {PAPER_RTOL:.2g} for paper, {RTOL} for batchnorm)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--force", action="store_true", help="replace this study's files from an earlier run in --out"
    )
    p.set_defaults(handler=cmd_rank_study)


def cmd_rank(args: argparse.Namespace) -> int:
    config = load_config_source(args)
    use_proxy = args.resolution <= PROXY_MAX_RESOLUTION if args.proxy is None else args.proxy
    measured = proxy_config(config, args.resolution, config.num_classes) if use_proxy else config
    check_memory(measured, args.resolution, args.samples, purpose="measure its rank")
    result = measure_rank(
        measured,
        resolution=args.resolution,
        samples=args.samples,
        seed=args.seed,
        rtol=args.rtol,
        protocol=args.protocol,
    )
    if args.json:
        print_json(result.to_dict())
        return 0
    label = config.name or args.config
    how = "CIFAR proxy (stride rule of rexsearch.proxy)" if use_proxy else "as configured, no proxy"
    print(f"{label} at {args.resolution}x{args.resolution}: {how}")
    if result.protocol == "paper":
        print(
            f"{result.samples} random U[0, 1) images, seed {args.seed}, eval mode (fresh BatchNorm: identity)"
        )
    else:
        print(f"{result.samples} random Gaussian images, seed {args.seed}, BatchNorm on batch statistics")
    print(f"rank: singular values above {result.rtol:g} x the largest (float32 noise floor at least)\n")
    print_table(
        ["layer", "in", "out", "rows", "rank", "normalized", "expand"],
        [
            [
                layer.name,
                layer.in_channels,
                layer.out_channels,
                layer.rows,
                layer.rank,
                f"{layer.normalized:.3f}",
                "*" if layer.in_objective else "",
            ]
            for layer in result.per_layer
        ],
    )
    short = [layer.name for layer in result.per_layer if layer.rows < layer.out_channels]
    if short:
        print(f"\nfewer rows than channels (rank measured against the rows): {', '.join(short)}")
    n = len(result.objective_layers)
    print(f"\nrank objective  {result.rank:.4f}  (mean normalized rank of the {n} expand layers marked *)")
    print(f"nuclear norm    {result.nuclear_norm:.4f}  (pooled penultimate feature P, normalized:")
    print("                |P|_* / (|P|_F sqrt(min(N, C))), 1 = flat spectrum)")
    return 0


def cmd_rank_study(args: argparse.Namespace) -> int:
    check_out(args.out, args.study, args.protocol, args.force)  # before minutes of computing
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (total - done)
        print(
            f"\rrank-study: {done}/{total} points, {elapsed:.0f} s elapsed, about {eta:.0f} s left",
            end="\n" if done == total else "",
            file=sys.stderr,
            flush=True,
        )

    if args.study == "channels":
        df = run_channel_study(
            args.networks,
            seed=args.seed,
            quick=args.quick,
            progress=progress,
            protocol=args.protocol,
            rtol=args.rtol,
        )
        csv_path, html_path = write_channel_study(df, args.out, args.force)
    else:
        df = run_rank_study(
            args.networks,
            seed=args.seed,
            quick=args.quick,
            progress=progress,
            rtol=args.rtol,
            protocol=args.protocol,
        )
        csv_path, html_path = write_rank_study(df, args.out, args.force)
    settings = df.attrs["settings"]
    print(f"wrote {csv_path} and {html_path}")
    print(
        f"protocol {settings['protocol']}, {settings['networks']} networks per point, "
        f"d_out {settings['d_out'][0]}..{settings['d_out'][1]}, rtol {settings['rtol']:g}, "
        f"seed {settings['seed']}, {time.perf_counter() - start:.1f} s"
    )
    return 0
