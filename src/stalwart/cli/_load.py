"""Loading a pipeline named on the command line: ``path/to/file.py[:name]`` or
``package.module[:name]``."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

from .._errors import UsageError
from .._pipeline import Pipeline

__all__ = ["load_pipeline"]


def load_pipeline(target: str) -> Pipeline:
    """``path/to/file.py[:name]`` or ``package.module[:name]`` -> the ``Pipeline`` object.

    Without ``:name``, the module must hold exactly one ``Pipeline``. The file is imported
    under its own name, not as ``__main__``, so its ``if __name__ == "__main__"`` block
    does not run.
    """
    spec, _, attribute = target.partition(":")
    if spec.endswith(".py") or "/" in spec or Path(spec).is_file():
        module = _import_file(Path(spec))
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # `stalwart status mypipe:pipeline` beside mypipe.py
        try:
            module = importlib.import_module(spec)
        except Exception as exc:
            raise UsageError(
                f"cannot import pipeline module {spec!r}: {type(exc).__name__}: {exc}"
            ) from exc
    found, name = _find_pipeline(module, attribute, target)
    if found.source is None:
        found.source = f"{spec}:{name}"
    return found


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"no pipeline file at {str(path)!r}")
    name = f"stalwart_target_{path.stem}".replace("-", "_")
    import importlib.util  # noqa: PLC0415 - only `stalwart run file.py` loads a file

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(
            f"cannot import pipeline file {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _find_pipeline(module: ModuleType, attribute: str, target: str) -> tuple[Pipeline, str]:
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, Pipeline):
            raise UsageError(f"{target!r}: {attribute!r} is not a stalwart.Pipeline")
        return found, attribute
    candidates = {k: v for k, v in vars(module).items() if isinstance(v, Pipeline)}
    if len(candidates) == 1:
        [(name, found)] = candidates.items()
        return found, name
    if not candidates:
        raise UsageError(f"{target!r} defines no stalwart.Pipeline")
    raise UsageError(
        f"{target!r} defines several pipelines ({', '.join(sorted(candidates))}); "
        f"name one as {target}:NAME"
    )
