"""PNG plots of simulation results, so a run or a sweep can be judged at a glance instead of from JSON:
reputation and replication cost over virtual time for one run, and for a sweep the wrong-accepted rate
against the malicious fraction, or wrong-accepted and replicas per step against network size. Rates go on
a symmetric log axis that is linear below RATE_FLOOR, so a zero is drawn at 0, not passed off as a small
rate. Uses the Agg backend, so it works without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402

RATE_FLOOR = 1e-6  # the rate axis is logarithmic above this and linear below, down to 0
MARKERS = "osD^v<>ph*"
CLASS_ORDER = ["honest", "random-wrong", "colluding", "sybil", "on-off"]


def _save(fig: Figure, path: Path) -> Path:
    """Write `fig` to `path` and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _classes(series: list[dict]) -> list[str]:
    """The node classes seen in any snapshot: the known ones in a fixed order, then any others sorted."""
    seen = {cls for snap in series for cls in snap.get("reputation", {})}
    return [c for c in CLASS_ORDER if c in seen] + sorted(seen - set(CLASS_ORDER))


def plot_reputation(result: dict, series: list[dict], path: Path) -> Path:
    """Mean reputation of each node class over virtual time."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for cls in _classes(series):
        points = [(snap["t"], snap["reputation"][cls]) for snap in series if cls in snap.get("reputation", {})]
        ax.plot([t for t, _ in points], [r for _, r in points], marker=".", label=cls)
    ax.set_ylim(0, 1)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("mean reputation")
    ax.set_title(f"{result.get('scenario', 'run')}: reputation by node class")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def plot_replicas(result: dict, series: list[dict], path: Path) -> Path:
    """Replicas per step in each window between snapshots, with the run's overall mean as a line.
    Snapshots at which no step settled since the previous one carry no rate and are skipped."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    points, last_steps = [], 0
    for snap in series:
        if snap["steps"] > last_steps:
            points.append((snap["t"], snap["replicas_per_step"]))
            last_steps = snap["steps"]
    ax.plot([t for t, _ in points], [r for _, r in points], marker=".", label="per window")
    overall = result.get("replicas_per_step")
    if overall is not None:
        ax.axhline(overall, color="grey", linestyle="--", label=f"whole run: {overall:.3g}")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("replicas per step")
    ax.set_title(f"{result.get('scenario', 'run')}: replication cost")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_run(result: dict, series: list[dict], out_dir: Path) -> list[Path]:
    """Write reputation.png and replicas.png for one run into `out_dir` (created); return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_reputation(result, series, out_dir / "reputation.png"),
            plot_replicas(result, series, out_dir / "replicas.png")]


def plot_fraction(rows: list[dict], out_dir: Path) -> Path:
    """Write wrong-vs-fraction.png into `out_dir` (created): the wrong-accepted rate against the malicious
    fraction, one line per (policy, redundancy), on a log axis that draws zero rates at 0. Each line's
    legend gives its mean replicas per step over the fractions, the price of that accuracy."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _save(fraction_figure(rows)[0], out_dir / "wrong-vs-fraction.png")


def fraction_figure(rows: list[dict]):
    """The figure of plot_fraction, and its axes."""
    lines: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for row in rows:
        key = (str(row["policy"]), int(row["redundancy"]))
        lines.setdefault(key, []).append((float(row["fraction"]), float(row["wrong_accepted_rate"]),
                                          float(row["replicas_per_step"])))
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, ((policy, redundancy), points) in enumerate(sorted(lines.items())):
        points.sort()
        cost = sum(p[2] for p in points) / len(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], **_style(i, len(lines)),
                label=f"{policy}, r={redundancy} ({cost:.2f} replicas/step)")
    _rate_axis(ax)
    ax.set_xlabel("malicious fraction of workers")
    ax.set_ylabel("wrong-accepted rate (0 is drawn at 0)")
    ax.set_title("wrong answers accepted vs malicious fraction")
    ax.grid(True, which="both", alpha=0.3)
    if lines:
        ax.legend(fontsize="small")
    return fig, ax


def _style(i: int, n: int) -> dict:
    """The i-th of n lines' look. Lines often lie on one another (every policy at 0 wrong answers): each
    is drawn narrower than the one before it, with a hollow marker smaller than the one before it, so the
    earlier ones show around the later ones (nested stripes and rings) instead of being hidden."""
    wider = n - 1 - i
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": "-" if i % 2 == 0 else "--",
            "linewidth": 1.2 + 1.6 * wider, "markersize": 5 + 3.5 * wider, "markerfacecolor": "none",
            "markeredgewidth": 1.5}


def _rate_axis(ax) -> None:
    """A rate axis that shows 0 as 0: logarithmic from RATE_FLOOR up, linear from 0 to it."""
    ax.set_yscale("symlog", linthresh=RATE_FLOOR, linscale=0.5)
    ax.set_ylim(bottom=-0.6 * RATE_FLOOR)  # room below 0, so lines at 0 are drawn whole, not cut by the frame
    ax.axhline(0, color="grey", linewidth=0.8, zorder=0)


def plot_size(rows: list[dict], out_dir: Path) -> Path:
    """Write vs-size.png into `out_dir`: wrong-accepted rate and replicas per step (spot checks apart)
    against the number of nodes, one line per (policy, redundancy, malicious fraction)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: dict[tuple[str, int, float], list[tuple[int, float, float]]] = {}
    for row in rows:
        key = (str(row["policy"]), int(row["redundancy"]), float(row["fraction"]))
        lines.setdefault(key, []).append((int(row["nodes"]), float(row["wrong_accepted_rate"]),
                                          float(row["replicas_per_step"])))
    fig, (wrong, cost) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, ((policy, redundancy, fraction), points) in enumerate(sorted(lines.items())):
        points.sort()
        style = {**_style(i, len(lines)), "label": f"{policy}, r={redundancy}, {fraction:g} adversaries"}
        wrong.plot([p[0] for p in points], [p[1] for p in points], **style)
        cost.plot([p[0] for p in points], [p[2] for p in points], **style)
    for ax in (wrong, cost):
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.grid(True, which="both", alpha=0.3)
    _rate_axis(wrong)
    wrong.set_ylabel("wrong-accepted rate (0 is drawn at 0)")
    wrong.set_title("wrong answers accepted vs network size")
    cost.set_ylim(bottom=0)
    cost.set_ylabel("replicas per step")
    cost.set_title("replication cost vs network size")
    if lines:
        cost.legend(fontsize="small")
    return _save(fig, out_dir / "vs-size.png")
