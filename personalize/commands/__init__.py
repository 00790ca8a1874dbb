"""The library's command groups, one module each, mounted by :mod:`personalize.cli`.

    options         what several commands share (base model, heads, prompts, parsing, errors)
    method_options  one option per decoding-method parameter, derived from the library's dataclasses
    generate        personalize generate
    heads           personalize heads list|train
    evaluate        personalize eval

The database and user commands live with the database (:mod:`personalize.db.cli`); the service's
commands (serve, ui, demo) with the service (``app.cli``).
"""
