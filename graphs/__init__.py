"""LangGraph graphs and nodes (issue: the LangGraph solver)."""
