"""Admin: the registered heads and their versions; upload a head; activate or deactivate a version."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from ui import session
from ui.client import ApiClient, ApiError, Objective

HEAD_FILES = ["json", "safetensors"]


def _table(objectives: Sequence[Objective]) -> None:
    rows = [
        {
            "objective": o.name,
            "version": v.version,
            "active": v.active,
            "loaded": v.active and o.loaded,
            "kind": v.kind,
            "size (MB)": round(v.size_bytes / 2**20, 2),
            "registered": v.created_at[:19].replace("T", " "),
        }
        for o in objectives
        for v in o.versions
    ]
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.info("No heads registered yet: upload one below.")


def _activation(api: ApiClient, objectives: Sequence[Objective]) -> None:
    st.subheader("Activate or deactivate")
    if not objectives:
        return
    names = [o.name for o in objectives]
    name = st.selectbox("Objective", names, key="admin_objective")
    objective = next(o for o in objectives if o.name == name)
    versions = [v.version for v in objective.versions]
    current = objective.version if objective.version in versions else versions[-1]
    version = st.selectbox("Version", versions, index=versions.index(current), key="admin_version")
    state = f"active version {objective.version}" if objective.active else "inactive"
    st.caption(f"{name}: {state}" + ("" if objective.loaded or not objective.active else " (loading…)"))
    left, right = st.columns(2)
    with left:
        activate = st.button(f"Activate {name} v{version}", key="activate")
    with right:
        deactivate = st.button(f"Deactivate {name}", key="deactivate", disabled=not objective.active)
    try:
        if activate:
            changed = api.set_active(name, True, version)
            st.session_state["admin_message"] = f"{changed.name}: version {changed.version} is active."
            st.rerun()
        if deactivate:
            changed = api.set_active(name, False)
            st.session_state["admin_message"] = f"{changed.name} is deactivated (its versions are kept)."
            st.rerun()
    except ApiError as exc:
        st.error(f"Not changed: {exc}")


def _upload(api: ApiClient) -> None:
    st.subheader("Upload a head")
    st.caption(
        "A head folder's files: `head.json` and its `.safetensors` (`value_head.safetensors`, and for a LoRA "
        "head `adapter_model.safetensors`). `personalize heads train` writes such a folder."
    )
    with st.form("upload_form", clear_on_submit=True):
        files = st.file_uploader("Head files", type=HEAD_FILES, accept_multiple_files=True, key="head_files")
        activate = st.checkbox("Activate after upload", value=True, key="upload_activate")
        submitted = st.form_submit_button("Upload", key="upload")
    if not submitted:
        return
    if not files:
        st.error("Choose the head's files first (head.json and its .safetensors).")
        return
    try:
        objective = api.upload_head([(f.name, f.getvalue()) for f in files], activate=activate)
    except ApiError as exc:
        st.error(f"Upload refused: {exc}")
        return
    st.session_state["admin_message"] = f"Registered {objective.name}; active version: {objective.version or 'none'}."
    st.rerun()


def main() -> None:
    api, user = session.require_user()
    st.title("Admin")
    if not user.is_admin:
        st.warning(f"{user.name} is not an admin: sign in with an admin key to manage heads.")
        st.stop()
    if message := st.session_state.pop("admin_message", None):
        st.success(message)
    try:
        objectives = api.objectives()
    except ApiError as exc:
        st.error(f"Cannot read the objectives: {exc}")
        st.stop()
    st.subheader("Heads")
    _table(objectives)
    _activation(api, objectives)
    _upload(api)


main()
