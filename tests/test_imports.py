"""The package's layering (docs/architecture.md): no import cycles (deferred and TYPE_CHECKING
imports included), each part imports only the parts below it, and the scheduler imports no torch,
transformers, Ray or engine."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

HEAVY = ("torch", "transformers", "ray", "vllm", "rollout_len.engine", "rollout_len.vllm_engine", "rollout_len.model")

# Top to bottom: a part may import the parts below it, never those above. Parts in one Layer may
# import each other (without forming a module cycle).
LAYERS = (
    "rollout_len.cli",
    "rollout_len.bench",
    "rollout_len.verl",
    grimp.Layer("rollout_len.forelen", "rollout_len.baselines", independent=False),
    "rollout_len.rollout",
    "rollout_len.predictor",
    "rollout_len.vllm_engine",
    "rollout_len.engine",
    "rollout_len.tasks",
    grimp.Layer("rollout_len.kv_cache", "rollout_len.model", "rollout_len.sampling", "rollout_len.data"),
    "rollout_len.sched",
    "rollout_len.sample",
)


def import_graph() -> nx.DiGraph:
    """rollout_len's modules and every import between them, wherever it is written (grimp parses
    the source, so imports inside functions and under TYPE_CHECKING count)."""
    graph = grimp.build_graph("rollout_len", cache_dir=None)
    g = nx.DiGraph()
    for module in graph.modules:
        g.add_node(module)
        g.add_edges_from((module, imported) for imported in graph.find_modules_directly_imported_by(module))
    return g


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_sees_deferred_imports(tmp_path):
    """The check is not blind: a cycle written with a function-level import is found."""
    pkg = tmp_path / "cyclic"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclic import b\n")
    (pkg / "b.py").write_text("def f():\n    from cyclic import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("cyclic", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert graph.find_modules_directly_imported_by("cyclic.b") == {"cyclic.a"}


def test_scheduler_imports_no_torch_ray_or_engine():
    code = (
        "import sys, rollout_len.sched, rollout_len.sched.simulator, rollout_len.sched.timeline; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"rollout_len.sched loaded {out.stdout.strip()}"


def test_scheduler_source_names_no_heavy_module():
    """Also the imports that do not run at import time (inside functions): none reach torch, Ray or the engine."""
    graph = grimp.build_graph("rollout_len", include_external_packages=True, cache_dir=None)
    for module in graph.find_children("rollout_len.sched") | {"rollout_len.sched", "rollout_len.sample"}:
        for imported in graph.find_modules_directly_imported_by(module):
            assert not any(imported == h or imported.startswith(h + ".") for h in HEAVY), f"{module} imports {imported}"


def test_each_part_imports_only_the_parts_below_it():
    graph = grimp.build_graph("rollout_len", cache_dir=None)
    illegal = graph.find_illegal_dependencies_for_layers(layers=LAYERS)
    assert not illegal, [(d.importer, d.imported, [str(r) for r in d.routes]) for d in illegal]
    layered = {m for layer in LAYERS for m in (layer.module_tails if isinstance(layer, grimp.Layer) else {layer})}
    top = {".".join(m.split(".")[:2]) for m in graph.modules if m != "rollout_len"}
    assert top <= layered, f"parts missing from LAYERS (add them where they belong): {sorted(top - layered)}"


def test_kernels_import_nothing_else_of_the_package():
    """kernels/ (installed as rollout_len.kernels, outside the folder the graph walks) is a leaf."""
    for path in Path(__file__).parents[1].joinpath("kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rollout_len"):
                assert node.module.startswith("rollout_len.kernels"), f"{path.name} imports {node.module}"
