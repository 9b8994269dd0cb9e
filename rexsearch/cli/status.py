"""The live status line of `rexsearch run`, `resume` and `confirm` (stderr), and durations in words."""

from __future__ import annotations

import math
import sys


class StatusLine:
    """One status line on stderr (rewritten in place on a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, p) -> None:
        if self.quiet:
            return
        best = []
        if p.best_accuracy is not None:
            best.append(f"acc {100 * p.best_accuracy:.2f}%")
        if p.best_rank is not None:
            best.append(f"rank {p.best_rank:.4f}")
        if p.best_latency is not None:
            best.append(f"latency {p.best_latency:.2f} ms")
        eta = f", ETA {duration_text(p.eta)}" if p.eta is not None else ""
        epochs = ""
        if p.epochs and p.epochs_per_trial:
            epochs = " (epochs " + ", ".join(f"{e}/{p.epochs_per_trial}" for e in p.epochs.values()) + ")"
        line = (
            f"[{p.done + p.failed + p.pruned}/{p.total}] done {p.done}, running {p.running}{epochs}, "
            f"failed {p.failed}, pruned {p.pruned} | best {' '.join(best) or '-'} | "
            f"{duration_text(p.elapsed)} elapsed{eta}"
        )
        if line == self.last:
            return
        self.last = line
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def event(self, message: str) -> None:
        if not self.quiet:
            self.end()
            print(message, file=sys.stderr)

    def end(self) -> None:
        if self.tty and self.last and not self.quiet:
            sys.stderr.write("\n")
            self.last = ""


def duration_text(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
