"""Trade-off: the evaluation's Pareto plot (reward against length and cost) for the registered heads."""

from __future__ import annotations

import streamlit as st

from ui import session

EVAL_COMMAND = "personalize eval --plot docs/eval.png --markdown docs/eval.md --json docs/eval.json"


def main() -> None:
    st.title("Trade-off")
    st.write(
        "How much each objective's score moves with the steering strength, and what it costs: "
        "base sampling, value-guided sampling (VAS) at several betas, and Best-of-N, on the held-out prompts."
    )
    plot = session.config().eval_plot
    if plot.is_file():
        st.image(str(plot), caption=f"Pareto plot from `personalize eval` ({plot.name})")
        table = plot.with_suffix(".md")
        if table.is_file():
            with st.expander("The numbers (Markdown table written by the same run)"):
                st.markdown(table.read_text())
    else:
        st.info(
            f"No evaluation plot at `{plot}` yet. Produce it (several minutes on a CPU) with:\n\n"
            f"```\n{EVAL_COMMAND}\n```\n\nor point `PERSONALIZE_EVAL_PLOT` at an existing PNG."
        )


main()
