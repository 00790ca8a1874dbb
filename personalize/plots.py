"""Figures for the evaluation report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from personalize.evaluation import EvalReport


def plot_report(report: EvalReport, path: Path) -> Path:
    """Left: the two-objective weight sweep (Pareto view). Right: each objective's reward by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = list(report.config.objectives)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    if report.sweep and report.config.sweep is not None:
        a, b = report.config.sweep
        xs = [r.rewards[a].mean for r in report.sweep]
        ys = [r.rewards[b].mean for r in report.sweep]
        left.errorbar(
            xs,
            ys,
            xerr=[r.rewards[a].ci95 for r in report.sweep],
            yerr=[r.rewards[b].ci95 for r in report.sweep],
            fmt="-o",
            capsize=3,
            label="vas sweep",
        )
        for r, x, y in zip(report.sweep, xs, ys, strict=True):
            left.annotate(f"{a}={r.weights[a]:g}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        base = report.rows[0]
        left.scatter([base.rewards[a].mean], [base.rewards[b].mean], marker="s", color="black", label="base", zorder=3)
        for r in report.rows:
            if r.method == "bon" and r.best_of == max(report.config.bon_sizes) and set(r.weights) & {a, b}:
                left.scatter([r.rewards[a].mean], [r.rewards[b].mean], marker="^", label=r.label, zorder=3)
        left.set_xlabel(f"{a} reward")
        left.set_ylabel(f"{b} reward")
        left.set_title(f"weight sweep {a} → {b} (beta={report.config.sweep_beta:g})")
        left.legend(fontsize=8)
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
