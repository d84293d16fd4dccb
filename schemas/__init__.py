"""Pydantic models of every external contract (described in the docs/reference/topics.md, HTTP API,
The sales handoff, Scoring rules)."""
