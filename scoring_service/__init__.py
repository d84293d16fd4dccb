"""The rules engine (pure) and the consumer that drives it."""
