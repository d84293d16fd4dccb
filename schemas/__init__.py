"""Pydantic models of every external contract (described in the README: Topics, HTTP API,
The sales handoff, Scoring rules)."""
