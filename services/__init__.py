"""Runtime plumbing: settings, Kafka, database, outbox relay, metrics, HTTP, entry point."""

from importlib.metadata import version

# The one place the version is read (pyproject.toml sets it); the API and topic documents,
# and the metrics, give this.
__version__ = version("leadscore")
