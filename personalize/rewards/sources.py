"""Where a reward comes from besides the built-ins: installed entry points and ``module:function``.

    entry_point_names()      rewards published by installed packages (group ``personalize.rewards``)
    entry_point(name)        the object one of them points at (imported on first use), or None
    import_reward(spec)      the object ``module:function`` names (imports the module)
    is_import_spec(spec)     whether ``spec`` has the ``module:function`` form

A package publishes a reward in its ``pyproject.toml``::

    [project.entry-points."personalize.rewards"]
    formal = "my_package.rewards:formality"

Entry points are named by the installed packages, so resolving one imports code the operator
installed; :func:`import_reward` imports whatever module a string names and is only called for
specs a user typed (``personalize.rewards.load_reward``), never for names read from a request
or a head's metadata.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import EntryPoint, entry_points

from personalize.errors import RewardError

ENTRY_POINT_GROUP = "personalize.rewards"
_IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_spec(spec: str) -> bool:
    """``package.module:function`` (dotted names on both sides of one colon)."""
    return bool(_IMPORT_SPEC.match(spec))


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def entry_point_names() -> list[str]:
    """Names of the rewards installed packages publish, sorted."""
    return sorted(_entry_points())


def entry_point(name: str) -> object | None:
    """What the installed entry point ``name`` points at, or None when no package publishes it."""
    found = _entry_points().get(name)
    if found is None:
        return None
    try:
        return found.load()
    except Exception as exc:  # a broken plugin: say which one, whatever it raised
        raise RewardError(f"reward {name!r} (entry point {found.value!r}) cannot be loaded: {exc}") from exc


def import_reward(spec: str) -> object:
    """The attribute ``function`` of module ``module`` for ``spec = "module:function"``."""
    if not is_import_spec(spec):
        raise RewardError(f"{spec!r} is not of the form module:function (e.g. my_rewards:formality)")
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardError(
            f"reward {spec!r}: cannot import module {module_name!r} ({exc}); make it importable "
            "(install it, or run from the folder that holds it)"
        ) from exc
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RewardError(f"reward {spec!r}: module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise RewardError(f"reward {spec!r} is a {type(target).__name__}, not a callable")
    return target
