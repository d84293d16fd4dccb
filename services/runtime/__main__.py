"""`python -m services.runtime`: the `leadscore` command (run, send, token, migrate, ...)."""

from services.runtime.cli import entry

entry()
