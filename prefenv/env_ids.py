"""Finding the env behind an id: the user's own modules, Gymnasium's ``module:Id`` form, errors.

A user's env reaches prefenv in three ways, all resolved here:

* ``import_modules(["my_pkg"])``: import modules whose import registers ids (``--import``).
* ``"my_pkg:my/Env-v0"``: Gymnasium's own form; the module is imported, the id is what follows.
* a ``prefenv.tasks`` entry point in the user's installed package
  (:data:`prefenv.TASK_ENTRY_POINT_GROUP`), found without any import by hand.

:func:`resolve_env_id` returns the bare registered id, or raises :class:`UnknownEnvError`: one
message that names the closest registered ids and how to register one, in place of Gymnasium's
``NameNotFound`` / ``NamespaceNotFound`` chain.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable

import gymnasium as gym

__all__ = ["UnknownEnvError", "import_modules", "resolve_env_id"]


class UnknownEnvError(ValueError):
    """An env id that no imported module registers, or a module named for it that won't import."""


def import_modules(modules: Iterable[str]) -> None:
    """Import each module (e.g. a package whose import registers Gymnasium ids or agents).

    Raises:
        UnknownEnvError: a module cannot be imported; the message carries the import error.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UnknownEnvError(
                f"cannot import module {module!r} ({exc}): install it (pip install -e PATH) or "
                "add the folder that holds it to PYTHONPATH"
            ) from exc


def resolve_env_id(env_id: str, load_task_packages: Callable[[], None]) -> str:
    """The registered id ``env_id`` names, importing its module first for ``module:Id``.

    Args:
        env_id: a registered id, or ``"module:Id"`` (Gymnasium's form).
        load_task_packages: imports the installed task packages (called only when the id is not
            registered yet, so a known id costs no entry-point scan).

    Raises:
        UnknownEnvError: the module will not import, or no module registers the id.
    """
    module, _, bare = env_id.rpartition(":")
    if module:
        import_modules([module])
    if bare not in gym.registry:
        load_task_packages()
    if bare in gym.registry:
        return bare
    raise UnknownEnvError(_unknown_message(env_id, bare, module))


def _unknown_message(env_id: str, bare: str, module: str) -> str:
    ids = sorted(gym.registry)
    close = difflib.get_close_matches(bare, ids, n=3, cutoff=0.75)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    ours = [i for i in ids if i.startswith("prefenv/")]
    where = f"module {module!r} was imported but registers no such id; " if module else ""
    return (
        f"unknown env id {env_id!r}: {where}{hint}prefenv ids: {', '.join(ours)}. For your own "
        "env, register it (gymnasium.register) in a module and pass that module "
        "(--import my_pkg, or --env my_pkg:my/Env-v0; in Python: import it first), or declare a "
        "'prefenv.tasks' entry point in its package"
    )
