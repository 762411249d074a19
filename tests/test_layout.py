"""How the code is laid out (README, "How the code is laid out"): the pipeline's graph and
execution packages keep their functions short enough to read at once."""

import ast

import pytest

from tests.helpers import ROOT


@pytest.mark.parametrize("package", ["graphs", "execution"])
def test_no_function_in_the_graph_or_execution_is_over_60_lines(package):
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted((ROOT / package).glob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert long == []
