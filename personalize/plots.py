"""Figures for the evaluation report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from personalize.evaluation import EvalReport, MethodRow


def plot_report(report: EvalReport, path: Path) -> Path:
    """Left: one panel per two-objective weight sweep (Pareto view). Right: each objective's reward by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = list(report.config.objectives)
    pairs = [pair for pair in report.config.sweeps if report.sweep_rows(pair)]
    fig, axes = plt.subplots(1, len(pairs) + 1, figsize=(6.5 * (len(pairs) + 1), 5.2), squeeze=False)
    for left, pair in zip(axes[0], pairs, strict=False):
        _plot_sweep(report, pair, left)
    right = axes[0][-1]
    width = 0.8 / max(len(objectives), 1)
    labels = [r.label for r in report.rows if r.method != "bon" or r.best_of in (4, max(report.config.bon_sizes))]
    rows = [r for r in report.rows if r.label in labels]
    for k, objective in enumerate(objectives):
        base_mean = report.rows[0].rewards[objective].mean
        xs = [i + k * width for i in range(len(rows))]
        right.bar(
            xs,
            [r.rewards[objective].mean - base_mean for r in rows],
            width,
            yerr=[r.rewards[objective].ci95 for r in rows],
            label=objective,
            capsize=2,
        )
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    right.set_xticklabels([r.label for r in rows], rotation=75, ha="right", fontsize=7)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_ylabel("reward minus base (95% CI)")
    right.set_title(f"{report.base_model}, {report.prompts} eval prompts")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_sweep(report: EvalReport, pair: tuple[str, str], ax: Any) -> None:
    """One sweep's rewards (Pareto view) with base and the largest Best-of-N of either objective."""
    a, b = pair
    sweep = report.sweep_rows(pair)
    xs = [r.rewards[a].mean for r in sweep]
    ys = [r.rewards[b].mean for r in sweep]
    ax.errorbar(
        xs,
        ys,
        xerr=[r.rewards[a].ci95 for r in sweep],
        yerr=[r.rewards[b].ci95 for r in sweep],
        fmt="-o",
        capsize=3,
        label="vas sweep",
    )
    for r, x, y in zip(sweep, xs, ys, strict=True):
        ax.annotate(f"{a}={r.weights[a]:g}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    base = report.rows[0]
    ax.scatter([base.rewards[a].mean], [base.rewards[b].mean], marker="s", color="black", label="base", zorder=3)
    for r in report.rows:
        if r.method == "bon" and r.best_of == max(report.config.bon_sizes) and set(r.weights) & {a, b}:
            ax.scatter([r.rewards[a].mean], [r.rewards[b].mean], marker="^", label=r.label, zorder=3)
    ax.set_xlabel(f"{a} reward")
    ax.set_ylabel(f"{b} reward")
    ax.set_title(f"weight sweep {a} → {b} (beta={report.config.sweep_beta:g})")
    ax.legend(fontsize=8)


_CURVES = (  # method, label, marker: one curve per method, ordered by compute within it
    ("base", "base", "s"),
    ("bon", "best-of-N", "^"),
    ("vas", "vas (over beta)", "o"),
    ("ivg", "ivg", "D"),
    ("aisp", "aisp (over N)", "v"),
)


def _method_rows(report: EvalReport, method: str, objective: str) -> list[MethodRow]:
    """The rows of one method optimising ``objective`` (base: its single row), cheapest first."""
    if method == "base":
        return [r for r in report.rows if r.method == "base"]
    rows = [r for r in report.rows if r.method == method and r.objective == objective]
    return sorted(rows, key=lambda r: (r.flops_per_response, r.beta))


def _point_label(row: MethodRow) -> str:
    if row.method == "bon":
        return f"N={row.best_of}"
    if row.method == "vas":
        return f"β={row.beta:g}"
    if row.method == "aisp":
        return row.label.split()[2]  # "N=..."
    return ""


def plot_reward_vs_compute(report: EvalReport, path: Path) -> Path:
    """Reward against FLOPs per response, one panel per objective, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = list(report.config.objectives)
    fig, axes = plt.subplots(1, len(objectives), figsize=(5.2 * len(objectives), 4.6), squeeze=False)
    for ax, objective in zip(axes[0], objectives, strict=True):
        for method, name, marker in _CURVES:
            rows = _method_rows(report, method, objective)
            if not rows:
                continue
            xs = [r.flops_per_response / 1e9 for r in rows]
            ys = [r.rewards[objective].mean for r in rows]
            errs = [r.rewards[objective].ci95 for r in rows]
            ax.errorbar(xs, ys, yerr=errs, fmt=f"-{marker}", capsize=3, label=name, markersize=6)
            for r, x, y in zip(rows, xs, ys, strict=True):
                if _point_label(r):
                    ax.annotate(_point_label(r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("GFLOPs per response (log)")
        ax.set_ylabel(f"{objective} reward (95% CI)")
        ax.set_title(objective)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"reward vs compute: {report.base_model}, {report.prompts} eval prompts")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
