"""Typed settings from the environment (prefix LEADSCORE_), validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Leave the broker or database unset to run an embedded one."""

    model_config = SettingsConfigDict(env_prefix="LEADSCORE_", frozen=True, extra="ignore")

    # Where the service connects; None means "start the embedded one".
    kafka_bootstrap: str | None = None
    database_url: SecretStr | None = None

    # Local state of `make run`: embedded PostgreSQL data and the broker's pid file.
    data_dir: Path = Path(".leadscore")
    embedded_broker_port: int = Field(default=9092, ge=1, le=65535)
    # Which embedded broker: Apache Kafka (needs Java 17+), or Tansu (memory only; the
    # fallback where there is no Java, README: Embedded broker).
    embedded_broker_kind: Literal["kafka", "tansu"] = "kafka"

    # API tokens as name:role:sha256hex entries (see services/auth.py); unset = loopback only.
    api_tokens: SecretStr | None = None

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)

    topic_events: str = "lead-events"
    topic_transitions: str = "lead-status-transitions"
    topic_account_transitions: str = "account-status-transitions"
    topic_notifications: str = "sales-notifications"
    topic_dlq: str = "lead-events-dlq"
    topic_feedback: str = "sales-feedback"
    # Partitions of the topics created at start-up; the unit of parallelism for scale-out.
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    consumer_group: str = "leadscore"

    # A batch is what one database transaction scores. 2,000 records keep a transaction
    # well under a second on a small machine while amortising the round trips.
    batch_max_records: int = Field(default=2000, ge=1, le=100_000)
    # Batches of lead events scored side by side, each lane on its own partitions (partition
    # number modulo this): while one lane waits for the database, another scores. Per
    # partition, order is kept; across partitions, lanes are like instances.
    consumer_lanes: int = Field(default=1, ge=1, le=16)
    # Leads kept in memory after a write, checked against their row version when met again
    # (services/pipeline/lead_cache.py); 0, the default, reads every lead from the database:
    # on the bench's workload the cache did not pay (README, "What changed, each measured").
    lead_cache_size: int = Field(default=0, ge=0, le=10_000_000)
    # How long to wait for a batch to fill: short, so a lone hot event is not held back.
    batch_timeout_ms: int = Field(default=20, ge=0, le=10_000)
    # Producer batching: a few ms of linger gathers records without hurting latency.
    producer_linger_ms: int = Field(default=2, ge=0, le=1000)
    # The relay's producer numbers its batches, so a send retried after a lost answer is not
    # written twice. Tansu (the no-Java fallback) has no idempotent producer: off there.
    kafka_enable_idempotence: bool = True
    # How long the broker waits for a silent consumer before giving its partitions to the
    # others: a killed instance's partitions wait this long (heartbeats go at a third of it).
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    # Static group membership (KIP-345): an instance that restarts under the same id within
    # the session timeout gets its partitions back at once, instead of the group waiting for
    # the dead member's session to run out and rebalancing twice. Give each instance its own
    # stable id (a StatefulSet pod name; deploy/ sets it); two live instances with one id
    # fence each other. `make run` with the embedded broker uses "leadscore-local".
    kafka_group_instance_id: str | None = Field(default=None, min_length=1, max_length=200)

    outbox_batch: int = Field(default=2000, ge=1, le=100_000)
    # The relay is woken by every commit; this poll only catches work from other instances.
    outbox_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    outbox_retention_hours: float = Field(default=24, gt=0)
    # How often follow-up deadlines are checked (a breach is reported at most this late).
    sla_check_seconds: float = Field(default=2.0, gt=0, le=60)
    # How long scored event history is kept (re-scoring and impact reports replay it).
    history_retention_days: float = Field(default=400, gt=0)
    # Batches wait for the disk before they count as done. Off is faster but a database crash
    # can then lose acknowledged batches; the consumer goes back to the stored offsets after
    # any database error, which covers that only when the crash is noticed (README, Reliability).
    synchronous_commit: bool = True
    # How often a running consumer checks that the broker still has the log it scored.
    log_check_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Largest record the relay publishes; larger DLQ copies are stored truncated. Real Kafka
    # refuses records over its message.max.bytes (1 MiB by default).
    max_record_bytes: int = Field(default=900 * 1024, ge=1024, le=100 * 1024 * 1024)
    # Largest HTTP request body (a rule set, a simulation, an ingest batch); larger get 413.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    # CPU-heavy requests (simulation, rule-set validation) get this long on a worker thread.
    request_cpu_seconds: float = Field(default=5.0, gt=0, le=600)
    # The web console's sessions (README: Web console) live in PostgreSQL: a session ends when
    # it has been idle this long, and after `console_session_hours` however active.
    console_idle_minutes: float = Field(default=30.0, gt=0, le=24 * 60)
    console_session_hours: float = Field(default=8.0, gt=0, le=24 * 30)
    # Send the cookie over HTTPS only: set it wherever the console is reached through TLS.
    console_secure_cookie: bool = False
    # Host names the service answers to (README: Security), comma-separated; `.example.com`
    # admits its subdomains, `*` any name. The loopback names, the listening address and IP
    # literals are always admitted; any other Host gets 421, so a DNS-rebinding page (a
    # foreign name resolved to this machine) can neither read nor write.
    allowed_hosts: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: plain lines on a terminal, JSON lines otherwise (a log collector, a file).
    log_format: Literal["auto", "json", "text"] = "auto"

    # Outbound endpoints (README: Webhooks and CRM writers). Secrets and tokens are stored
    # encrypted with this Fernet key; unset, a key is made in data_dir (one instance only).
    secrets_key: SecretStr | None = None
    # Endpoint URLs on loopback, private, link-local or other non-public addresses, and plain
    # http, are refused unless allowed here (a test receiver on this machine, say).
    outbound_allow_private: bool = False
    outbound_allow_http: bool = False
    # One request's whole exchange, connection to last byte.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Retries wait base * 2^(n-1), capped, with jitter; Retry-After within the cap.
    webhook_backoff_seconds: float = Field(default=5.0, gt=0, le=3600)
    webhook_backoff_cap_seconds: float = Field(default=3600.0, gt=0, le=86400)
    # Requests in flight per endpoint and instance (each to a different lead or account).
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    # How often the dispatcher looks for work other instances queued (it is also woken by
    # its own instance's commits).
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    webhook_max_endpoints: int = Field(default=50, ge=1, le=1000)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _no_blank(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("api_tokens")
    @classmethod
    def _tokens_parse(cls, value: SecretStr | None) -> SecretStr | None:
        from services.auth import parse_tokens

        if value is not None:
            parse_tokens(value.get_secret_value())  # fail at start-up, not on first request
        return value

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    def with_changes(self, **changes: object) -> Settings:
        """A copy with some settings changed, validated like the originals."""
        return Settings.model_validate({**self.model_dump(), **changes})

    def output_topics(self) -> list[str]:
        """Every topic leadscore writes: the outputs' (services/outputs.py), then the DLQ."""
        from services.outputs import output_topics  # the table names these settings

        return [*output_topics(self), self.topic_dlq]

    def all_topics(self) -> list[str]:
        return [self.topic_events, *self.output_topics(), self.topic_feedback]
