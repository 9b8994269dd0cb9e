"""Checkpoints of a run's winners and of presets, and :func:`load_model` for any of them.

An export directory holds ``config.json`` (``rexsearch.config/1``), ``model.safetensors``
(the state_dict in the rexsearch, official or timm layout; its metadata records the layout,
the config and a SHA-256 of the tensors), ``README.md`` (a model card) and, on request,
``model.onnx`` (dynamic batch) or ``model.torchscript.pt``. Directories are written to a
temporary sibling and renamed into place, so an export is never half-written.

Which trial ``--trial best`` exports (:func:`select_trial`): among complete, feasible
trials, the run's Pareto front (the study's objectives, all maximised; a single objective
is paired with fewer MACs), then

* ``accuracy`` (default when the run measured accuracy): the highest proxy accuracy;
* ``rank`` (default for rank-only runs): the highest normalized feature rank;
* ``balanced``: each front objective is replaced by its rank among the front points
  divided by the front size (1 = best), and the largest sum wins;

ties always go to fewer MACs, then to the lower trial number.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rexsearch.config import ReXNetConfig
from rexsearch.cost import count_cost
from rexsearch.errors import ConfigError, LayoutError, UserError
from rexsearch.layouts import LAYOUTS, from_layout, to_layout
from rexsearch.model import build_model
from rexsearch.principles import get_preset
from rexsearch.rundir import RunInfo, load_run

PICKS = ("accuracy", "rank", "balanced")
WEIGHTS = ("init", "proxy")
FORMATS = ("safetensors", "onnx", "torchscript")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
TARGET_CONFIG_FILE = "target-config.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"

#: Proxy weights are trained on 32x32 CIFAR images.
PROXY_RESOLUTION = 32

BEST_DEFINITION = (
    "'best' is the trial with the highest proxy accuracy on the feasible Pareto front "
    "(--pick rank: the highest feature rank; --pick balanced: the best sum of rank-normalised "
    "objectives over the front); ties go to fewer MACs."
)

_META_LAYOUT = "rexsearch.layout"
_META_CONFIG = "rexsearch.config"
_META_DIGEST = "rexsearch.sha256"
_CLASSIFIER_KEYS = {"official": "output.1.weight", "timm": "head.fc.weight", "rexsearch": "classifier.weight"}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    out: Path
    config: ReXNetConfig
    files: tuple[Path, ...]
    trial: int | None = None
    selection: str = ""
    onnx_max_diff: float | None = None


# ---------------------------------------------------------------------------- choosing a trial
def select_trial(info: RunInfo, trial: str | int = "best", pick: str | None = None) -> tuple[Any, str]:
    """The run's trial to export and a sentence saying why it was chosen."""
    from rexsearch.report import _frame, feasible_front, front_objectives, primary_metric

    study = info.open_study()
    trials = study.get_trials(deepcopy=False)
    if trial != "best":
        number = _trial_number(trial)
        chosen = find_trial(info, trials, number)
        state = chosen.state.name
        if state == "FAIL":
            error = chosen.user_attrs.get("error", "no error recorded")
            raise UserError(f"trial {number} failed ({error}); export a complete or pruned trial")
        if state not in ("COMPLETE", "PRUNED"):
            raise UserError(f"trial {number} is {state.lower()}, not finished; wait for it or pick another")
        return chosen, f"trial {number}, chosen by number ({state.lower()})"

    metric = pick or primary_metric(info)
    if metric not in PICKS:
        raise UserError(f"--pick must be one of {', '.join(PICKS)}, got {metric!r}")
    if metric == "accuracy" and "accuracy" not in info.objectives:
        raise UserError(f"{info.path} is a rank-only run (no accuracy measured); use --pick rank or balanced")
    frame = _frame(info, trials)
    keys, maximize = front_objectives(info)
    done = frame[(frame["state"] == "COMPLETE") & frame[keys].notna().all(axis=1)]
    feasible = done[done["feasible"].fillna(True).astype(bool)]
    front = feasible_front(feasible, info)
    if front.empty:
        raise UserError(
            f"{info.path} has no complete trial within the budget; export one with --trial N instead"
        )
    if metric == "balanced":
        n = len(front)
        score = np.zeros(n)
        for key, up in zip(keys, maximize, strict=True):
            values = front[key].to_numpy(dtype=float)
            score += _ranks(values if up else -values) / n
        front = front.assign(_score=score)
        order = front.sort_values(["_score", "macs", "number"], ascending=[False, True, True])
        what = f"the best sum of rank-normalised {' and '.join(keys)} on the feasible Pareto front"
    else:
        order = front.sort_values([metric, "macs", "number"], ascending=[False, True, True])
        size = f"{len(front)} trial{'s' if len(front) > 1 else ''}"
        what = f"the highest {metric} on the feasible Pareto front ({size})"
    number = int(order.iloc[0]["number"])
    return next(t for t in trials if t.number == number), f"trial {number}: {what}, ties to fewer MACs"


def find_trial(info: RunInfo, trials: Sequence[Any], number: int) -> Any:
    """The trial numbered ``number`` among the run's ``trials``; a UserError when there is none."""
    for t in trials:
        if t.number == number:
            return t
    last = f"0 to {max(t.number for t in trials)}" if trials else "none"
    raise UserError(f"{info.path} has no trial {number} (trial numbers: {last})")


_STATE_WORDS = {"FAIL": "failed", "COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running"}


def describe_state(trial: Any) -> str:
    """The trial's state in words, with the error the run recorded: ``pruned: infeasible: ...``."""
    state = _STATE_WORDS.get(trial.state.name, trial.state.name.lower())
    error = trial.user_attrs.get("error")
    if not error:
        return state
    error = " ".join(str(error).split())  # one line, whatever the worker reported
    return f"{state}: {error[:197] + '...' if len(error) > 200 else error}"


def trial_config(info: RunInfo, trial: Any, key: str = "config", purpose: str = "exported") -> ReXNetConfig:
    """The config a trial carries in its user attribute ``key``, named ``RUN-trial-N`` (or
    ``RUN-BASELINE``); a UserError naming the trial's state when it has none (a trial pruned as
    infeasible, or one that failed before its config was decoded) or it is invalid.

    ``key`` is ``config`` (the target network the budget applies to) or ``proxy_config``;
    ``purpose`` ends the message ("it cannot be exported").
    """
    attrs = trial.user_attrs
    if key not in attrs:
        raise UserError(
            f"trial {trial.number} has no {key} attribute ({describe_state(trial)}); it cannot be {purpose}"
        )
    try:
        config = ReXNetConfig.from_dict(attrs[key])
    except ConfigError as exc:
        raise UserError(f"trial {trial.number}'s {key} is invalid: {exc}") from None
    label = attrs.get("baseline") or f"trial-{trial.number}"
    return replace(config, name=f"{info.path.name}-{label}")


def run_trial_config(
    run_dir: str | Path, number: int, purpose: str = "trained"
) -> tuple[RunInfo, Any, ReXNetConfig]:
    """Trial ``number`` of the run at ``run_dir`` (any state) and its target config (:func:`trial_config`)."""
    info = load_run(run_dir)
    trials = info.open_study().get_trials(deepcopy=False)
    trial = find_trial(info, trials, number)
    return info, trial, trial_config(info, trial, "config", purpose)


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, method="average")


def _trial_number(trial: str | int) -> int:
    try:
        number = int(trial)
    except (TypeError, ValueError):
        raise UserError(f"--trial must be 'best' or a trial number, got {trial!r}") from None
    if number < 0:
        raise UserError(f"--trial must be 'best' or a trial number, got {trial!r}")
    return number


# ---------------------------------------------------------------------------- writing
def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} is not empty; choose another directory or pass --force to replace it")


@contextmanager
def _staged(out: Path, force: bool) -> Iterator[Path]:
    """A temporary sibling of ``out`` that replaces ``out`` only when the block succeeds."""
    _check_out(out, force)
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


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state_dict, in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(
    model: nn.Module, config: ReXNetConfig, path: Path, layout: str = "rexsearch"
) -> dict[str, torch.Tensor]:
    """Write ``model``'s state_dict in ``layout`` as safetensors; metadata records layout and config."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if layout != "rexsearch":
        state = {k: v.contiguous() for k, v in to_layout(state, config, layout).items()}
    metadata = {
        "format": "pt",
        _META_LAYOUT: layout,
        _META_CONFIG: config.to_json(indent=None),
        _META_DIGEST: tensor_digest(state),
    }
    path.write_bytes(save(state, metadata=metadata))
    return state


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


def _export_torchscript(model: nn.Module, resolution: int, path: Path) -> None:
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


def _check_options(out: Path, force: bool, layout: str, formats: Sequence[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {unknown[0]!r}")
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    _check_out(out, force)


def _write(
    tmp: Path,
    model: nn.Module,
    config: ReXNetConfig,
    resolution: int,
    layout: str,
    formats: Sequence[str],
    card: str,
) -> tuple[list[str], float | None]:
    names = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]
    (tmp / CONFIG_FILE).write_text(config.to_json() + "\n")
    save_weights(model, config, tmp / WEIGHTS_FILE, layout)
    diff = None
    if "onnx" in formats:
        diff = _export_onnx(model, resolution, tmp / ONNX_FILE)
        names.append(ONNX_FILE)
    if "torchscript" in formats:
        _export_torchscript(model, resolution, tmp / TORCHSCRIPT_FILE)
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
    info = load_run(run_dir)
    out = Path(out)
    _check_options(out, force, layout, formats)
    if weights not in WEIGHTS:
        raise UserError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    chosen, why = select_trial(info, trial, pick)
    attrs = chosen.user_attrs
    config = trial_config(info, chosen, "config" if weights == "init" else "proxy_config")
    if weights == "init":
        seed = int(info.data.get("seed") or 0) if seed is None else seed
        model = _seeded_model(config, seed)
        resolution = info.resolution
    else:
        path = info.weights_path(chosen.number)
        if not path.is_file():
            raise UserError(
                f"{info.path} kept no proxy weights for trial {chosen.number} ({path} is missing); "
                "rerun the search with `rexsearch run --keep-weights`, or export --weights init"
            )
        model = _load_into(config, _read_safetensors(path)[0], "rexsearch", path)
        resolution = PROXY_RESOLUTION
    card = _trial_card(info, chosen, config, why, weights, seed, layout, formats, out, resolution)
    with _staged(out, force) as tmp:
        names, diff = _write(tmp, model, config, resolution, layout, formats, card)
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


_CONVENTION = (
    "MACs are multiply-accumulates of conv and linear layers at the stated resolution, batch 1, "
    "eval mode (what the ReXNet paper, timm and most mobile-CNN papers call FLOPs); fvcore's total "
    "adds BatchNorm (2 per element) and pooling."
)


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


_METRIC_LABELS = {
    "rank": "feature rank (mean normalized)",
    "nuclear_norm": "nuclear norm of the final feature",
    "train_seconds": "proxy training seconds",
    "proxy_macs": f"proxy MACs at {PROXY_RESOLUTION}x{PROXY_RESOLUTION}",
    "fvcore_macs": "fvcore's conv+linear MACs of the target network",
}


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
    fidelity = info.data.get("fidelity") or {}
    metrics = []
    if trial.values:
        metrics += [
            f"| {n} (objective) | {v:.4f} |" for n, v in zip(info.objectives, trial.values, strict=False)
        ]
    if attrs.get("config_hash"):
        metrics.append(f"| target config hash | {attrs['config_hash']} |")
    for key, label in _METRIC_LABELS.items():
        value = attrs.get(key)
        if value is None or (key in info.objectives and trial.values):
            continue
        metrics.append(f"| {label} | {value:,} |" if isinstance(value, int) else f"| {label} | {value:.4f} |")
    curve = attrs.get("accuracy_curve")
    if curve:
        metrics.append(f"| proxy accuracy per epoch | {', '.join(f'{a:.4f}' for a in curve)} |")
    if weights == "init":
        weights_text = (
            f"Freshly initialised weights (seed {seed}) of the target network; train it before use."
        )
    else:
        weights_text = (
            f"The proxy weights the search trained ({fidelity.get('epochs', '?')} epochs on "
            f"{fidelity.get('train_images', '?')} CIFAR-100 images at 32x32): a short proxy, "
            f"not a final model. `{CONFIG_FILE}` describes this proxy; `{TARGET_CONFIG_FILE}` is the "
            f"network designed for {info.resolution}x{info.resolution} that the budget applies to."
        )
    baseline = f", the enqueued baseline {attrs['baseline']}" if attrs.get("baseline") else ""
    lines = [
        f"# {config.name}",
        "",
        f"Trial {trial.number} of the rexsearch run `{info.path}` ({trial.state.name.lower()}{baseline}).",
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
    budget = f"{info.flops_budget:,} MACs" + (
        f", {info.params_budget:,} parameters" if info.params_budget is not None else ""
    )
    files = _files(layout, formats)
    if weights == "proxy":
        files.append(f"- `{TARGET_CONFIG_FILE}`: the target network's architecture")
    lines += [
        "",
        _CONVENTION + f" The run's budget: {budget} at {info.resolution}x{info.resolution}.",
        "",
        "## Search metrics",
        "",
        "| metric | value |",
        "|---|---:|",
        *metrics,
        "",
        f"Proxy fidelity: {json.dumps(fidelity)}. Proxy accuracy is top-1 on a held-out part of the "
        "CIFAR-100 training set; rank is the mean normalized feature rank.",
        "",
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
            _CONVENTION,
            "",
            "## Files",
            "",
            *_files(layout, formats),
            "",
            *_usage(out),
        ]
    )


# ---------------------------------------------------------------------------- loading
def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt"
        ) from None
    digest = metadata.get(_META_DIGEST)
    if digest is not None and tensor_digest(state) != digest:
        raise UserError(
            f"{path} is corrupt: its tensors do not match the checksum recorded when it was written"
        )
    return state, metadata


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; all mean "not loadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path} cannot be loaded as a weights-only PyTorch state_dict ({first[:200]}); "
            "it may be truncated, corrupt or hold pickled objects other than tensors"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise UserError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def detect_layout(state: Mapping[str, torch.Tensor], source: Path | str = "state_dict") -> str:
    """``official``, ``timm`` or ``rexsearch``, told apart by the classifier's key."""
    for layout, key in _CLASSIFIER_KEYS.items():
        if key in state:
            return layout
    first = next(iter(state), None)
    raise LayoutError(
        f"{source}: cannot tell its layout (first key {first!r}); expected a rexsearch, official "
        "(clovaai/rexnet) or timm ReXNet state_dict"
    )


def _load_into(
    config: ReXNetConfig, state: Mapping[str, torch.Tensor], layout: str, source: Path
) -> nn.Module:
    try:
        converted = from_layout(state, config, layout)
    except LayoutError as exc:
        raise LayoutError(f"{source}: {exc}") from None
    model = build_model(config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def load_model(path: str | Path, preset: str | None = None) -> nn.Module:
    """The network stored at ``path``, in eval mode.

    ``path`` is an export directory (config.json + model.safetensors) or a state_dict file
    (``.safetensors``, or ``.pt``/``.pth`` read with ``torch.load(weights_only=True)``) in the
    rexsearch, official or timm layout, detected from its keys. The architecture comes from
    ``preset`` when given (its classifier follows the file's number of classes), else from
    the directory's config.json or the file's metadata. Unreadable, corrupt or mismatched
    files raise :class:`~rexsearch.errors.UserError` naming the file.
    """
    path = Path(path)
    config: ReXNetConfig | None = None
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise UserError(f"{path} has no {WEIGHTS_FILE}; is it a rexsearch export directory?")
        if preset is None and (path / CONFIG_FILE).is_file():
            config = ReXNetConfig.load(path / CONFIG_FILE)
        path = weights
    elif not path.is_file():
        raise UserError(f"no such file or directory: {path}")
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
    elif path.suffix in (".pt", ".pth"):
        state, metadata = _read_torch(path), {}
    else:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .safetensors, .pt or .pth")
    layout = metadata.get(_META_LAYOUT) or detect_layout(state, path)
    if layout not in LAYOUTS:
        raise LayoutError(f"{path}: unknown layout {layout!r} in its metadata")
    if preset is not None:
        config = get_preset(preset)
        classifier = state.get(_CLASSIFIER_KEYS[layout])
        if classifier is not None and classifier.ndim >= 1 and classifier.shape[0] != config.num_classes:
            config = config.with_num_classes(int(classifier.shape[0]))
    elif config is None and _META_CONFIG in metadata:
        try:
            config = ReXNetConfig.from_json(metadata[_META_CONFIG])
        except ConfigError as exc:
            raise UserError(f"{path}: the config in its metadata is invalid: {exc}") from None
    if config is None:
        raise UserError(
            f"{path} does not say which architecture it holds; pass preset=NAME (e.g. rexnet-1.0)"
        )
    return _load_into(config, state, layout, path)
