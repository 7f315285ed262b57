"""Plugins: modules that register compressors before ``mpiopt run`` builds its options.

``mpiopt run --plugin MODULE_OR_FILE`` (repeatable) imports an importable module name
(``mypkg.compressors``) or a Python file (``examples/custom_compressor.py``) before the command's
options are built, so what the module registers (``@mpiopt.compressors.register``) appears in
``--help``, in the ``--compressor`` choices and as flags. An installed package declares the same in
its metadata, an entry point in the group ``mpiopt.plugins`` (the value names a module, or an object
in one, that registers on import)::

    [options.entry_points]            # setup.cfg; pyproject.toml: [project.entry-points."mpiopt.plugins"]
    mpiopt.plugins =
        mycompressors = mypkg.compressors

Entry points load first, then the ``--plugin`` modules in the order given. Under ``mpiexec`` every
rank parses the same arguments and imports the same modules, so every rank's registry is the same.
"""

import importlib
import importlib.util
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import List, Sequence

from mpiopt.errors import InputError, quoted

GROUP = "mpiopt.plugins"


def load_entry_points() -> List[str]:
    """Import every installed ``mpiopt.plugins`` entry point; return their names."""
    loaded = []
    for ep in entry_points(group=GROUP):
        try:
            ep.load()
        except Exception as exc:
            dist = f" of {ep.dist.name}" if getattr(ep, "dist", None) is not None else ""
            raise InputError(f"the plugin entry point {ep.name!r}{dist} ({ep.value}) failed to load: "
                             f"{type(exc).__name__}: {exc}", collective=True) from exc
        loaded.append(ep.name)
    return loaded


def load_plugin(spec: str) -> ModuleType:
    """Import ``spec``: a path to a ``.py`` file (anything ending in ``.py`` or naming a file), else
    an importable module name. A file is imported once, as module ``mpiopt_plugin_<stem>``."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        return _load_file(spec, path)
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec.startswith(exc.name):
            raise InputError(f"--plugin {quoted(spec)}: no module named {exc.name!r} (give an importable module "
                             f"name or the path to a .py file)", collective=True) from exc
        raise _failed(spec, exc) from exc
    except Exception as exc:
        raise _failed(spec, exc) from exc


def _load_file(spec: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise InputError(f"--plugin {quoted(spec)}: no such file", collective=True)
    name = "mpiopt_plugin_" + re.sub(r"\W", "_", path.stem)
    known = sys.modules.get(name)
    if known is not None and Path(getattr(known, "__file__", "")).resolve() == path.resolve():
        return known
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _failed(spec, exc) from exc
    return module


def _failed(spec: str, exc: Exception) -> InputError:
    return InputError(f"--plugin {quoted(spec)} failed to import: {type(exc).__name__}: {exc}", collective=True)


def requested(argv: Sequence[str]) -> List[str]:
    """The ``--plugin`` values of a command line (``--plugin X`` or ``--plugin=X``), in order."""
    found = []
    for i, token in enumerate(argv):
        if token == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif token.startswith("--plugin="):
            found.append(token[len("--plugin="):])
    return found


def load_all(argv: Sequence[str]) -> None:
    """The installed entry points, then each ``--plugin`` of ``argv``."""
    load_entry_points()
    for spec in requested(argv):
        load_plugin(spec)
