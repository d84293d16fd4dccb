"""Runtime plumbing: settings, Kafka, database, outbox relay, metrics, HTTP, entry point."""
