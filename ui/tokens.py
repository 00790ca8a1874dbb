"""The token view: each generated token coloured by the objective that pushed it most.

A token's push from objective k is ``beta * w_k * z_k`` (what the service returns
with ``personalization.explain``); the colour is the objective with the largest
positive push, none when no objective raised the token by at least ``threshold``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence

from ui.client import TokenPush

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
THRESHOLD = 0.05


def objective_colours(names: Iterable[str]) -> dict[str, str]:
    """A stable colour per objective (sorted by name, so a page shows the same colours every time)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def strongest(contributions: Mapping[str, float], threshold: float = THRESHOLD) -> str | None:
    """The objective that raised this token's score most, or None if none raised it by ``threshold``."""
    if not contributions:
        return None
    name, push = max(contributions.items(), key=lambda item: (item[1], item[0]))
    return name if push >= threshold else None


def total_push(tokens: Sequence[TokenPush]) -> dict[str, float]:
    """Each objective's push summed over an answer's tokens."""
    totals: dict[str, float] = {}
    for token in tokens:
        for name, push in token.contributions.items():
            totals[name] = totals.get(name, 0.0) + push
    return totals


def _tooltip(token: TokenPush) -> str:
    pushes = ", ".join(f"{k} {v:+.2f}" for k, v in sorted(token.contributions.items()))
    return f"token {token.token_id}: {pushes or 'not steered'}"


def tokens_html(tokens: Sequence[TokenPush], colours: Mapping[str, str], threshold: float = THRESHOLD) -> str:
    """The answer as HTML spans, one per token, with the winning objective's colour and a tooltip."""
    spans: list[str] = []
    for token in tokens:
        if not token.text:
            continue
        winner = strongest(token.contributions, threshold)
        colour = colours.get(winner, "") if winner else ""
        style = f"background:{colour}55;border-bottom:2px solid {colour};" if colour else ""
        spans.append(
            f'<span class="pz-token" data-objective="{html.escape(winner or "")}" style="{style}" '
            f'title="{html.escape(_tooltip(token))}">{html.escape(token.text)}</span>'
        )
    body = "".join(spans)
    return f'<div class="pz-tokens" style="white-space:pre-wrap;line-height:1.7">{body}</div>'


def legend_html(colours: Mapping[str, str]) -> str:
    items = "".join(
        f'<span style="background:{c}55;border-bottom:2px solid {c};padding:0 .4em;margin-right:.6em">'
        f"{html.escape(name)}</span>"
        for name, c in colours.items()
    )
    return f'<div class="pz-legend">{items}<span style="color:#888">uncoloured: no objective pushed it</span></div>'
