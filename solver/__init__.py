"""An agentic multiple-choice solver for programming questions."""

from core.types import Prediction, Question

__all__ = ["Solver", "Question", "Prediction"]


def __getattr__(name):  # keep `import solver` light: vLLM loads only when a Solver is made
    if name == "Solver":
        from solver.api import Solver

        return Solver
    raise AttributeError(name)
