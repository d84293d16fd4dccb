"""Pydantic models of every external contract (see ../shared/CONTRACTS.md)."""
