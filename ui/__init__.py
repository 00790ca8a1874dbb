"""The Streamlit app: sliders over the service's objectives. Talks to the service over HTTP only.
Its modules:

    app.py        entry point (``streamlit run ui/app.py``): sign-in sidebar and page navigation
    views/        one script per page: generate, admin, trade-off
    client.py     the typed HTTP client (the only way to the service)
    config.py     the UI's settings (the only reader of environment variables here)
    session.py    who is signed in, kept in Streamlit's session state
    streams.py    two answers streamed side by side
    tokens.py     the token view: each token coloured by the objective that pushed it most
"""
