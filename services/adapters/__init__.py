"""Adapters: the only code that talks to Apache Kafka and PostgreSQL."""
