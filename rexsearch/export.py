"""Exporting a run's winners and presets: checkpoint folders with a model card.

An export directory holds ``config.json`` (``rexsearch.config/1``), ``model.safetensors``
(the state_dict in the rexsearch, official or timm layout; its metadata records the layout,
the config and a SHA-256 of the tensors, see :mod:`rexsearch.checkpoints`), ``README.md``
(a model card) and, on request, ``model.onnx`` (dynamic batch) or ``model.torchscript.pt``.
Directories are written to a temporary sibling and renamed into place, so an export is
never half-written. Which trial ``--trial best`` exports is :meth:`RunResults.best
<rexsearch.results.RunResults.best>`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rexsearch.checkpoints import CONFIG_FILE, WEIGHTS_FILE, load_into, read_safetensors, save_weights
from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost, macs_convention
from rexsearch.errors import UserError
from rexsearch.layouts import LAYOUTS
from rexsearch.model import build_model
from rexsearch.principles import get_preset
from rexsearch.proxy import PROXY_RESOLUTION
from rexsearch.results import BEST_DEFINITION, METRICS, RunResults
from rexsearch.rundir import RUN_JSON, RunInfo

WEIGHTS = ("init", "proxy")
FORMATS = ("safetensors", "onnx", "torchscript")

CARD_FILE = "README.md"
#: safetensors metadata of a run's export: the data set the run trained on (run.json's ``data``).
META_DATASET = "rexsearch.dataset"
TARGET_CONFIG_FILE = "target-config.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    out: Path
    config: ReXNetConfig
    files: tuple[Path, ...]
    trial: int | None = None
    selection: str = ""
    onnx_max_diff: float | None = None


# ---------------------------------------------------------------------------- writing
#: Entries of an existing --out that are looked through for run directories before --force replaces it.
FORCE_SCAN_LIMIT = 20_000


def _check_out(out: Path, force: bool, run_dir: Path | None = None) -> None:
    """Refuse an --out that would clobber what an export reads or the user works in.

    Never the current directory or one above it, never a run directory, a folder inside one
    or a folder holding one (``run_dir``, the run exported, included); then: a new or empty
    directory, or a non-empty one with ``force``.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UserError(
            f"--out {out} is the current directory or a folder above it; give a new folder, "
            "e.g. --out exported-model"
        )
    source = run_dir.resolve() if run_dir is not None else None
    for folder in (target, *target.parents):
        if folder == source or (folder / RUN_JSON).is_file():
            what = "is" if folder == target else "lies inside"
            raise UserError(
                f"--out {out} {what} the run directory {folder}; exports go to a folder of their own"
            )
    if source is not None and target in source.parents:
        raise UserError(f"--out {out} holds the run directory {source}; exports go to a folder of their own")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not force:
        raise UserError(f"--out {out} is not empty; choose another directory or pass --force to replace it")
    _check_no_run_inside(out)


def _check_no_run_inside(out: Path) -> None:
    """--force replaces ``out``: refuse when it holds a run directory (or too much to tell)."""
    import os

    seen = 0
    for root, dirs, files in os.walk(out):
        seen += len(dirs) + len(files)
        if RUN_JSON in files:
            raise UserError(
                f"--out {out} holds the run directory {root}; --force would delete it: choose another --out"
            )
        if seen > FORCE_SCAN_LIMIT:
            raise UserError(
                f"--out {out} holds more than {FORCE_SCAN_LIMIT:,} files and folders; --force replaces only "
                "earlier exports and other small folders: choose another --out"
            )


@contextmanager
def _staged(out: Path, force: bool, run_dir: Path | None = None) -> Iterator[Path]:
    """A temporary sibling of ``out`` that replaces ``out`` only when the block succeeds."""
    _check_out(out, force, run_dir)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.with_name(f".{out.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{tag}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _export_onnx(model: nn.Module, resolution: int, path: Path) -> float | None:
    """ONNX with a dynamic batch dimension; checked against torch when onnxruntime is installed."""
    if importlib.util.find_spec("onnx") is None:
        raise UserError("ONNX export needs the onnx package: pip install 'rexsearch[onnx]'")
    x = torch.randn(1, 3, resolution, resolution)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    return onnx_max_diff(model, path, resolution)


def onnx_max_diff(model: nn.Module, path: Path, resolution: int, batches: Sequence[int] = (1, 8)) -> float:
    """Largest |onnxruntime - torch| over random batches; a mismatch raises RuntimeError."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in batches:
        x = torch.randn(batch, 3, resolution, resolution, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-5):
            raise RuntimeError(f"ONNX output differs from torch at batch {batch} ({path})")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_torchscript(model: nn.Module, resolution: int, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
        scripted.save(str(path))
        loaded = torch.jit.load(str(path))
    x = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.allclose(loaded(x), model(x), rtol=1e-4, atol=1e-6):
            raise RuntimeError(f"TorchScript output differs from the model ({path})")


def _seeded_model(config: ReXNetConfig, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config).eval()


def _check_options(
    out: Path, force: bool, layout: str, formats: Sequence[str], run_dir: Path | None = None
) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {unknown[0]!r}")
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    _check_out(out, force, run_dir)


def _write(
    tmp: Path,
    model: nn.Module,
    config: ReXNetConfig,
    resolution: int,
    layout: str,
    formats: Sequence[str],
    card: str,
    metadata: dict[str, str] | None = None,
) -> tuple[list[str], float | None]:
    names = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]
    (tmp / CONFIG_FILE).write_text(config.to_json() + "\n")
    save_weights(model, config, tmp / WEIGHTS_FILE, layout, **(metadata or {}))
    diff = None
    if "onnx" in formats:
        diff = _export_onnx(model, resolution, tmp / ONNX_FILE)
        names.append(ONNX_FILE)
    if "torchscript" in formats:
        export_torchscript(model, resolution, tmp / TORCHSCRIPT_FILE)
        names.append(TORCHSCRIPT_FILE)
    (tmp / CARD_FILE).write_text(card)
    return names, diff


def export_trial(
    run_dir: str | Path,
    out: str | Path,
    trial: str | int = "best",
    weights: str = "init",
    formats: Sequence[str] = ("safetensors",),
    pick: str | None = None,
    layout: str = "rexsearch",
    force: bool = False,
    seed: int | None = None,
) -> ExportResult:
    """Export a trial of a run (see the module docstring for ``best`` and ``pick``).

    ``weights="init"``: the target config with fresh weights (``seed``, default the run's
    seed). ``weights="proxy"``: the proxy config with the weights the run kept.
    """
    results = RunResults.load(run_dir)
    info = results.run
    out = Path(out)
    _check_options(out, force, layout, formats, info.path)
    if weights not in WEIGHTS:
        raise UserError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    chosen, why = results.select(trial, pick)
    attrs = chosen.user_attrs
    config = results.config(chosen, "config" if weights == "init" else "proxy_config")
    if weights == "init":
        seed = info.seed if seed is None else seed
        model = _seeded_model(config, seed)
        resolution = info.resolution
    else:
        path = info.weights_path(chosen.number)
        if not path.is_file():
            raise UserError(
                f"{info.path} kept no proxy weights for trial {chosen.number} ({path} is missing); "
                "rerun the search with `rexsearch run --keep-weights`, or export --weights init"
            )
        model = load_into(config, read_safetensors(path)[0], "rexsearch", path)
        resolution = PROXY_RESOLUTION
    card = _trial_card(info, chosen, config, why, weights, seed, layout, formats, out, resolution)
    card += "\n".join(_confirmed_lines(results, chosen.number)) + "\n"
    dataset = {META_DATASET: json.dumps(info.dataset)} if info.dataset else {}
    with _staged(out, force, info.path) as tmp:
        names, diff = _write(tmp, model, config, resolution, layout, formats, card, dataset)
        if weights == "proxy":
            target = ReXNetConfig.from_dict(attrs["config"])
            (tmp / TARGET_CONFIG_FILE).write_text(replace(target, name=config.name).to_json() + "\n")
            names.append(TARGET_CONFIG_FILE)
    return ExportResult(out, config, tuple(out / n for n in names), chosen.number, why, diff)


def export_preset(
    name: str,
    out: str | Path,
    layout: str = "rexsearch",
    formats: Sequence[str] = ("safetensors",),
    force: bool = False,
    seed: int = 0,
) -> ExportResult:
    """A preset's freshly initialised (seeded) weights in ``layout``, with its config and a card."""
    config = get_preset(name)
    out = Path(out)
    _check_options(out, force, layout, formats)
    model = _seeded_model(config, seed)
    card = _preset_card(config, layout, seed, formats, out)
    with _staged(out, force) as tmp:
        names, diff = _write(tmp, model, config, 224, layout, formats, card)
    return ExportResult(out, config, tuple(out / n for n in names), None, f"preset {name}", diff)


# ---------------------------------------------------------------------------- model cards
def _cost_lines(config: ReXNetConfig, resolution: int) -> list[str]:
    cost = count_cost(config, resolution)
    return [
        f"| parameters | {cost.params:,} |",
        f"| MACs at {resolution}x{resolution} | {cost.macs:,} |",
        f"| fvcore total at {resolution}x{resolution} | {cost.fvcore_total:,} |",
    ]


def _architecture(config: ReXNetConfig) -> list[str]:
    se = sum(b.se for b in config.blocks)
    return [
        f"- {config.depth} blocks, output channels: {' '.join(map(str, config.out_channels))}",
        f"- stem {config.stem_channels} (stride {config.stem_stride}), penultimate "
        f"{config.penultimate_channels}, {config.num_classes} classes",
        f"- nonlinearity {config.activation} (depthwise: {config.dw_activation}), "
        f"SE on {se} blocks (ratio 1/{config.se_ratio}), {config.shortcut} shortcut",
    ]


def _files(layout: str, formats: Sequence[str]) -> list[str]:
    lines = [
        f"- `{CONFIG_FILE}`: the architecture (rexsearch.config/1)",
        f"- `{WEIGHTS_FILE}`: the state_dict in the {layout} layout",
    ]
    if "onnx" in formats:
        lines.append(f"- `{ONNX_FILE}`: ONNX (opset 17), input `input` with a dynamic batch dimension")
    if "torchscript" in formats:
        lines.append(f"- `{TORCHSCRIPT_FILE}`: TorchScript (`torch.jit.load`)")
    return lines


def _usage(out: Path, retrain: str = CONFIG_FILE) -> list[str]:
    return [
        "## Use",
        "",
        "```python",
        "import rexsearch",
        "",
        f'model = rexsearch.load_model("{out}")  # eval mode',
        "```",
        "",
        "Retrain it from scratch (see `rexsearch train --help` for the options):",
        "",
        "```bash",
        f"rexsearch train --config {out / retrain}",
        "```",
        "",
    ]


#: Record fields the model card lists (besides the objectives), labelled by :data:`METRICS`.
_CARD_METRICS = ("rank", "nuclear_norm", "train_seconds", "proxy_macs", "fvcore_macs")


def _trial_card(
    info: RunInfo,
    trial: Any,
    config: ReXNetConfig,
    why: str,
    weights: str,
    seed: int | None,
    layout: str,
    formats: Sequence[str],
    out: Path,
    resolution: int,
) -> str:
    attrs = trial.user_attrs
    fidelity = info.fidelity
    metrics = []
    if trial.values:
        metrics += [
            f"| {METRICS[n].label} (objective) | {METRICS[n].format(v)} |"
            for n, v in zip(info.objectives, trial.values, strict=False)
        ]
    if attrs.get("config_hash"):
        metrics.append(f"| target config hash | {attrs['config_hash']} |")
    for key in _CARD_METRICS:
        value = attrs.get(key)
        if value is None or (key in info.objectives and trial.values):
            continue
        m = METRICS[key]
        metrics.append(f"| {m.label} | {m.format(value)} |")
    curve = attrs.get("accuracy_curve")
    if curve:
        metrics.append(f"| proxy accuracy per epoch | {', '.join(f'{100 * a:.2f}%' for a in curve)} |")
    if weights == "init":
        weights_text = (
            f"Freshly initialised weights (seed {seed}) of the target network; train it before use."
        )
    else:
        split = (info.dataset or {}).get("split") or {}
        images = split.get("train_images") or fidelity.get("train_images") or "?"
        weights_text = (
            f"The proxy weights the search trained ({fidelity.get('epochs', '?')} epochs on "
            f"{images} {info.dataset_title} images at 32x32): a short proxy, "
            f"not a final model. `{CONFIG_FILE}` describes this proxy; `{TARGET_CONFIG_FILE}` is the "
            f"network designed for {info.resolution}x{info.resolution} that the budget applies to."
        )
    baseline = f", the enqueued baseline {attrs['baseline']}" if attrs.get("baseline") else ""
    lines = [
        f"# {config.name}",
        "",
        f"Trial {trial.number} of the rexsearch run `{info.path}` ({trial.state.name.lower()}{baseline})"
        + (f", searched on {info.dataset_title}." if info.dataset_title else ", rank only (no data set)."),
        "",
        f"Selection: {why}. {BEST_DEFINITION}",
        "",
        "## Architecture",
        "",
        *_architecture(config),
        "",
        "## Cost",
        "",
        "| | |",
        "|---|---:|",
        *_cost_lines(config, resolution),
    ]
    if weights == "proxy":
        lines += [
            f"| target network MACs at {info.resolution}x{info.resolution} | {attrs.get('macs', 0):,} |"
        ]
    budget = info.describe_budget()
    if "latency_ms" in attrs:
        at = f"{info.resolution}x{info.resolution}"
        lines += [f"| target network latency at {at} | {_latency_text(info, attrs)} |"]
    files = _files(layout, formats)
    if weights == "proxy":
        files.append(f"- `{TARGET_CONFIG_FILE}`: the target network's architecture")
    lines += [
        "",
        macs_convention() + f" The run's budget: {budget} at {info.resolution}x{info.resolution}.",
        "",
        "## Search metrics",
        "",
        "| metric | value |",
        "|---|---:|",
        *metrics,
        "",
        f"Proxy fidelity: {json.dumps(fidelity)}. {_accuracy_sentence(info)}Rank is the mean normalized "
        "feature rank." + (f" **{info.stand_in_data}**" if info.stand_in_data else ""),
        "",
        *_dataset_lines(info, config),
        "## Weights",
        "",
        weights_text,
        "",
        "## Files",
        "",
        *files,
        "",
        *_usage(out, TARGET_CONFIG_FILE if weights == "proxy" else CONFIG_FILE),
        f"The search that produced it: `{' '.join(map(str, info.data.get('command', [])))}`",
        "",
    ]
    return "\n".join(lines)


def _accuracy_sentence(info: RunInfo) -> str:
    data = info.dataset
    if not data:
        return ""
    split = data.get("split") or {}
    where = (
        "its val/ images" if split.get("validation") == "val/" else "a held-out part of its training images"
    )
    return f"Proxy accuracy is top-1 on {info.dataset_title}: {where}. "


def _dataset_lines(info: RunInfo, config: ReXNetConfig) -> list[str]:
    """The card's *Data set*: what the proxies trained on, and the head of the exported network."""
    from rexsearch.datasets import describe

    data = info.dataset
    if not data:
        return ["## Data set", "", "None: a rank-only run trains no proxy.", ""]
    lines = ["## Data set", "", f"- {describe(data)}"]
    if data.get("digest"):
        lines.append(f"- content digest `{data['digest']}`")
    if data.get("note"):
        lines.append(f"- {data['note']}")
    if data.get("mean"):
        mean = ", ".join(f"{v:.4f}" for v in data["mean"])
        std = ", ".join(f"{v:.4f}" for v in data["std"])
        lines.append(f"- inputs normalised with per-channel mean ({mean}) and std ({std}) of [0, 1] pixels")
    classes = data.get("classes")
    if classes and classes != config.num_classes:
        lines.append(
            f"- the proxies had {classes} outputs (the data set's classes); this network has "
            f"{config.num_classes}, as the search space defines the target: `rexsearch train` gives the "
            "proxy the data set's classes"
        )
    return [*lines, ""]


def _confirmed_lines(results: RunResults, number: int) -> list[str]:
    """The card's *Confirmed accuracy*: mean ± std over the confirmation seeds and the 95% CI of the
    difference from each confirmed baseline, or a note that the search's number is one training."""
    from rexsearch.stats import CI_METHOD, difference

    if "accuracy" not in results.objectives:
        return []
    c = results.confirmation
    row = c.of_trial(number) if c else None
    if row is None:
        return [
            "## Confirmed accuracy",
            "",
            "Not confirmed: the proxy accuracy above is one training, so seed noise is not estimated "
            f"(`rexsearch confirm {results.run.path}` retrains the top configs and the baselines "
            "with seeds).",
        ]
    m = METRICS["accuracy"]
    mine = c.values(row["label"])
    seeds = sorted(int(s) for s in c.complete.loc[c.complete["label"] == row["label"], "seed"])
    spread = f" ± {100 * row['std']:.2f} points" if row["n"] > 1 else ""
    lines = [
        "## Confirmed accuracy",
        "",
        "| | |",
        "|---|---|",
        f"| proxy accuracy, {int(row['n'])} seeds ({', '.join(map(str, seeds))}), "
        f"{int(row['epochs'])} epochs | {m.format(row['mean'])}{spread} (mean ± sample std) |",
    ]
    for b in c.summary[c.summary["role"] == "baseline"].itertuples():
        d = difference(mine, c.values(b.label))
        interval = f", 95% CI [{100 * d.low:+.2f}, {100 * d.high:+.2f}]" if d.tested else ""
        lines.append(
            f"| vs {b.label} ({m.format(b.mean)}) | {d.verdict}: {m.format_diff(d.diff)}{interval} |"
        )
    return [*lines, "", f"Intervals: the {CI_METHOD}."]


def _latency_text(info: RunInfo, attrs: dict[str, Any]) -> str:
    """Predicted (and measured) latency of the target network, and where it was measured."""
    text = f"{attrs['latency_ms']:.2f} ms predicted"
    if attrs.get("latency_measured_ms") is not None:
        text += f", {attrs['latency_measured_ms']:.2f} ms measured (median)"
    env = info.latency_environment
    if env:
        text += (
            f" on {env.get('device')} ({env.get('device_name')}), {env.get('runtime')} "
            f"{env.get('runtime_version')}, {env.get('threads')} threads, batch {env.get('batch', 1)}"
        )
    return text


def _preset_card(config: ReXNetConfig, layout: str, seed: int, formats: Sequence[str], out: Path) -> str:
    return "\n".join(
        [
            f"# {config.name}",
            "",
            f"The rexsearch preset {config.name}, freshly initialised (seed {seed}), in the {layout} layout.",
            "",
            "## Architecture",
            "",
            *_architecture(config),
            "",
            "## Cost",
            "",
            "| | |",
            "|---|---:|",
            *_cost_lines(config, 224),
            "",
            macs_convention(),
            "",
            "## Files",
            "",
            *_files(layout, formats),
            "",
            *_usage(out),
        ]
    )
