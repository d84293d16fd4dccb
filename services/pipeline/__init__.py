"""The unit of work, the consumer loop and its handlers, the outbox relay and background writers."""
