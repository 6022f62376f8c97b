"""Cost against scale, drawn: the curve every benchmark writes next to its JSON.

A benchmark sweeps its scale (sessions or clients) and gives, per series (the reference, its
peer), the cost at each point. :func:`write_curve` draws two panels:

* the cost itself against scale;
* the cost *per unit of scale* (cost / scale): flat where cost grows linearly, rising where it
  stops being linear, so a reader sees at a glance where that happens.

``scale_limit`` is what the benchmarks use to stay "where the machine allows": the largest
scale the open-file limit leaves room for.
"""

from __future__ import annotations

import resource
from pathlib import Path

#: Descriptors kept aside per process beyond one per connection (logs, links, listeners).
FD_MARGIN = 256


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def scale_limit(per_unit_fds: int = 1) -> int:
    """The largest number of connections one process can hold here, after :func:`raise_fd_limit`."""
    return max(0, (raise_fd_limit() - FD_MARGIN) // per_unit_fds)


def within_limit(scales: list[int], per_unit_fds: int = 1) -> tuple[list[int], list[int]]:
    """``scales`` split into those the machine allows and those it does not (reported, not run)."""
    limit = scale_limit(per_unit_fds)
    return [s for s in scales if s <= limit], [s for s in scales if s > limit]


def write_curve(
    path: Path,
    *,
    title: str,
    scale_label: str,
    cost_label: str,
    series: dict[str, list[tuple[float, float]]],
    per_unit_label: str = "",
    per_unit_factor: float = 1.0,
    note: str = "",
) -> Path:
    """Draw ``series`` (label -> [(scale, cost)]) into ``path`` (PNG); returns the path.

    The second panel shows cost / scale * ``per_unit_factor`` (labelled ``per_unit_label``);
    with an empty label it is left out (for a cost that is already per unit).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if per_unit_label else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    for label, points in series.items():
        pts = sorted(p for p in points if p[1] == p[1])  # drop NaN
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel(scale_label)
    ax.set_ylabel(cost_label)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if per_unit_label:
        ax2 = axes[0][1]
        for label, points in series.items():
            pts = sorted(p for p in points if p[1] == p[1] and p[0])
            if pts:
                ax2.plot([p[0] for p in pts], [p[1] / p[0] * per_unit_factor for p in pts], marker="o", label=label)
        ax2.set_xlabel(scale_label)
        ax2.set_ylabel(per_unit_label)
        ax2.set_ylim(bottom=0)
        ax2.grid(True, alpha=0.3)
        ax2.set_title("flat = linear", fontsize=9, color="#555")
    fig.suptitle(title, fontsize=11)
    if note:
        fig.text(0.01, 0.01, note, fontsize=8, color="#555")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
