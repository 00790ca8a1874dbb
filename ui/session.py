"""Who is signed in: the API key and user kept in Streamlit's session state, and the sign-in sidebar."""

from __future__ import annotations

from typing import NoReturn

import streamlit as st

from ui.client import ApiClient, ApiError, User
from ui.config import UIConfig

KEY_INPUT = "api_key_input"
URL_INPUT = "api_url_input"
_USER = "signed_in_user"
_KEY = "signed_in_key"
_URL = "signed_in_url"
_CLIENT = "signed_in_client"


def config() -> UIConfig:
    return UIConfig.from_env()


def current_user() -> User | None:
    user = st.session_state.get(_USER)
    return user if isinstance(user, User) else None


def client() -> ApiClient:
    """The signed-in caller's client (kept for the session: its connections are reused)."""
    api = st.session_state.get(_CLIENT)
    if not isinstance(api, ApiClient):
        api = ApiClient(st.session_state.get(_URL) or config().api_url, st.session_state.get(_KEY, ""))
        st.session_state[_CLIENT] = api
    return api


def sign_in(url: str, api_key: str) -> User:
    """Check the key against the service and remember it; raises ApiError when refused."""
    api = ApiClient(url, api_key)
    try:
        user = api.me()
    except ApiError:
        api.close()
        raise
    sign_out()
    st.session_state[_CLIENT] = api
    st.session_state[_USER] = user
    st.session_state[_KEY] = api_key
    st.session_state[_URL] = url
    return user


def sign_out() -> None:
    api = st.session_state.pop(_CLIENT, None)
    if isinstance(api, ApiClient):
        api.close()
    for name in (_USER, _KEY, _URL):
        st.session_state.pop(name, None)


def sidebar() -> None:
    """The sign-in form (pre-filled from PERSONALIZE_UI_API_KEY), or who is signed in."""
    cfg = config()
    with st.sidebar:
        user = current_user()
        if user is not None:
            st.success(f"Signed in as **{user.name}** ({user.role})")
            if st.button("Sign out", key="sign_out"):
                sign_out()
                st.rerun()
            return
        st.subheader("Sign in")
        with st.form("sign_in_form"):
            key = st.text_input("API key", value=cfg.prefill_api_key, type="password", key=KEY_INPUT)
            url = st.text_input("Service URL", value=cfg.api_url, key=URL_INPUT)
            submitted = st.form_submit_button("Sign in", key="sign_in")
        if cfg.prefill_api_key:
            st.caption("The demo user's key is filled in: press Sign in.")
        if submitted:
            if not key.strip():
                st.error("Enter an API key (`personalize users create NAME` prints one).")
                return
            try:
                sign_in(url.strip(), key.strip())
            except ApiError as exc:
                st.error(f"Sign-in failed: {exc}")
                return
            st.rerun()


def require_user() -> tuple[ApiClient, User]:
    """The client and user of a signed-in caller; otherwise a hint and the page stops here."""
    user = current_user()
    if user is None:
        _stop("Sign in with your API key in the sidebar to use this page.")
    return client(), user


def _stop(message: str) -> NoReturn:
    st.info(message)
    st.stop()
