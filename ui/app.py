"""The Streamlit app's entry point: ``streamlit run ui/app.py`` (``personalize demo`` starts it).

Every page talks to the service over HTTP only (``ui.client``); the sidebar signs in.
"""

from __future__ import annotations

import streamlit as st

from ui import session

st.set_page_config(page_title="personalize", page_icon=":material/tune:", layout="wide")
session.sidebar()
pages = [
    st.Page("views/generate.py", title="Generate", icon=":material/tune:", default=True),
    st.Page("views/teach.py", title="Teach me", icon=":material/thumbs_up_down:"),
    st.Page("views/admin.py", title="Admin", icon=":material/admin_panel_settings:"),
    st.Page("views/tradeoff.py", title="Trade-off", icon=":material/insights:"),
]
st.navigation(pages).run()
