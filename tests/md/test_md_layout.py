"""The package's own layout: ubmd.md modules import each other without cycles and use
no private names across modules; the names other packages import keep working."""

import ast
from pathlib import Path

import ubmd.md

MD = Path(ubmd.md.__file__).parent


def _imports() -> dict[str, list[tuple[str, str]]]:
    """Module -> (ubmd.md module, name) pairs it imports at module level."""
    out = {}
    for path in MD.glob("*.py"):
        pairs = []
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ubmd.md."):
                pairs += [(node.module.removeprefix("ubmd.md."), a.name) for a in node.names]
        out[path.stem] = pairs
    return out


def test_no_import_cycles_and_no_private_names_across_modules():
    graph = {m: {t for t, _ in pairs} for m, pairs in _imports().items()}
    private = [(m, t, n) for m, pairs in _imports().items() for t, n in pairs if n.startswith("_")]
    assert private == []
    done, path = set(), []

    def visit(m):
        assert m not in path, f"import cycle: {' -> '.join([*path, m])}"
        if m in done:
            return
        path.append(m)
        for t in graph.get(m, ()):
            visit(t)
        path.pop()
        done.add(m)

    for m in graph:
        visit(m)


def test_public_names_stay_importable():
    from ubmd.md import bias, samplers

    assert bias.UncertaintyCVConfig is samplers.UncertaintyCVConfig  # its old home
    for name in ubmd.md.__all__:
        assert getattr(ubmd.md, name) is not None
