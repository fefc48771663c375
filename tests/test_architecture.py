"""The package's shape, computed from its code: imports go one way (no cycle, counting
imports inside functions and under ``TYPE_CHECKING``), and the library never imports its
command line. A change that brings a cycle back fails here, naming it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stalwart

PACKAGE = Path(stalwart.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every ``stalwart`` module that ``path`` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("stalwart")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("stalwart"):
                continue
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known
            found |= submodules or {target}  # `from . import _x` imports _x
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {t for t in imports_of(path, set(modules)) if t in modules and t != name}
        for name, path in modules.items()
    }


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_the_code() -> None:
    edges = graph()
    assert "stalwart._atomic" in edges["stalwart._checkpoint"]  # a module-level import
    assert "stalwart._deadletter" in edges["stalwart._runner"]  # one inside a function
    assert "stalwart.instrumentation._events" in edges["stalwart._runner"]  # `from . import _x`


def test_there_is_no_import_cycle() -> None:
    assert find_cycle(graph()) is None


def test_a_cycle_would_be_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_command_line() -> None:
    edges = graph()
    library = {m for m in edges if not m.startswith("stalwart.cli") and m != "stalwart"}
    library -= {"stalwart.__main__"}
    offenders = {m: sorted(t for t in edges[m] if t.startswith("stalwart.cli")) for m in library}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_below_the_pipeline_nothing_knows_the_pipeline() -> None:
    """``Pipeline`` hands the runner a ``RunServices`` record; nothing reaches back."""
    edges = graph()
    users = {m for m, targets in edges.items() if "stalwart._pipeline" in targets}
    assert users <= {
        "stalwart.cli",
        "stalwart.cli._main",
        "stalwart.cli._load",
        "stalwart.cli._status",
        "stalwart.cli._deadletter",
        "stalwart.cli._demo",
        "stalwart.cli._report",
        "stalwart.cli._backfill",
        "stalwart.cli._operations",
    }


def test_disk_and_http_layers_know_nothing_of_runs() -> None:
    edges = graph()
    run_layer = {
        "stalwart._runner",
        "stalwart._context",
        "stalwart._services",
        "stalwart._reporting",
    }
    for module in (
        "stalwart._atomic",
        "stalwart._checkpoint",
        "stalwart._lock",
        "stalwart._http",
        "stalwart._retry",
        "stalwart._deadletter",
        "stalwart._store",
        "stalwart._s3",
        "stalwart._lease",
        "stalwart._remote_state",
    ):
        assert not edges[module] & run_layer, module


# -- named tuples: typed for type checkers, _records.record_type at run time --------------------


def typed_records(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """``class _XFields(NamedTuple)`` declared under ``if TYPE_CHECKING:``: its field names and
    the source of its defaults, and the same read from the ``__new__`` that the
    ``record_type(...)`` of the ``else:`` branch is given, as {name: (typed, runtime)} with
    each side ``fields + ["=" + default]``. A ``__new__`` must return its parameters, in
    order, as the tuple (``tuple.__new__(_cls, (a, b, ...))``)."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"):
            continue
        functions = {f.name: f for f in node.orelse if isinstance(f, ast.FunctionDef)}
        for cls in node.body:
            if not isinstance(cls, ast.ClassDef) or ast.unparse(cls.bases[0]) != "NamedTuple":
                continue
            typed = [s.target.id for s in cls.body if isinstance(s, ast.AnnAssign)]  # type: ignore[union-attr]
            typed += [
                "=" + ast.unparse(s.value)
                for s in cls.body
                if isinstance(s, ast.AnnAssign) and s.value is not None
            ]
            runtime: list[str] = []
            for other in node.orelse:
                if (
                    isinstance(other, ast.Assign)
                    and ast.unparse(other.targets[0]) == cls.name
                    and isinstance(other.value, ast.Call)
                ):
                    new = functions[ast.unparse(other.value.args[1])]
                    params = [a.arg for a in new.args.args[1:]]
                    values = ", ".join(params) + ("," if len(params) == 1 else "")
                    returned = f"tuple.__new__(_cls, ({values}))"
                    [body] = new.body
                    assert isinstance(body, ast.Return), new.name
                    assert body.value is not None, new.name
                    assert ast.unparse(body.value) == returned, f"{new.name}: not its parameters"
                    runtime = params + ["=" + ast.unparse(d) for d in new.args.defaults]
            found[f"{path.stem}.{cls.name}"] = (typed, runtime)
    return found


def test_each_typed_record_matches_its_run_time_namedtuple() -> None:
    """What mypy checks (the ``NamedTuple`` under ``TYPE_CHECKING``) is what runs (the
    ``record_type``): the same fields in the same order, the same defaults."""
    records: dict[str, tuple[list[str], list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        records.update(typed_records(path))
    assert "_records._MarkerFields" in records, "the records were not found"
    for name, (typed, runtime) in records.items():
        assert typed == runtime, f"{name}: typed {typed} but run time {runtime}"


def test_a_record_that_drifted_is_caught(tmp_path: Path) -> None:
    source = tmp_path / "drift.py"
    source.write_text(
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    class _AFields(NamedTuple):\n"
        "        a: int\n"
        "        b: int = 0\n"
        "else:\n"
        "    def _new_a(_cls, a, b, c=0):\n"
        "        return tuple.__new__(_cls, (a, b, c))\n"
        "    _AFields = record_type('A', _new_a)\n"
    )
    [(typed, runtime)] = typed_records(source).values()
    assert typed == ["a", "b", "=0"]
    assert runtime == ["a", "b", "c", "=0"]


def test_a_new_that_does_not_return_its_parameters_is_caught(tmp_path: Path) -> None:
    source = tmp_path / "swapped.py"
    source.write_text(
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    class _AFields(NamedTuple):\n"
        "        a: int\n"
        "        b: int\n"
        "else:\n"
        "    def _new_a(_cls, a, b):\n"
        "        return tuple.__new__(_cls, (b, a))\n"
        "    _AFields = record_type('A', _new_a)\n"
    )
    with pytest.raises(AssertionError, match="_new_a: not its parameters"):
        typed_records(source)
