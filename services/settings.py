"""Typed settings from the environment (prefix LEADSCORE_), validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Leave the broker or database unset to run an embedded one."""

    model_config = SettingsConfigDict(env_prefix="LEADSCORE_", frozen=True, extra="ignore")

    # Each description is the configuration reference's text (docs/reference/configuration.md
    # is generated from them), so it is written for an operator, not for this file's reader.
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Kafka bootstrap servers, e.g. `kafka-1:9092,kafka-2:9092`; "
        "unset starts the embedded broker",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="`postgresql://user:pass@host:5432/db` (the driver is always asyncpg); "
        "unset starts the embedded PostgreSQL",
    )
    data_dir: Path = Field(
        default=Path(".leadscore"),
        description="where `make run` keeps the embedded PostgreSQL's data, the broker's log "
        "and the key for outbound secrets when none is set",
    )
    embedded_broker_port: int = Field(
        default=9092, ge=1, le=65535, description="port of the embedded broker"
    )
    embedded_broker_kind: Literal["kafka", "tansu"] = Field(
        default="kafka",
        description="`kafka` (Apache Kafka, needs Java 17+) or `tansu` (memory only, the "
        "fallback where there is no Java; see Kafka and PostgreSQL)",
    )
    api_tokens: SecretStr | None = Field(
        default=None,
        description="API tokens as `name:role:sha256hex,...` (`leadscore token NAME ROLE` "
        "makes one); unset, the API answers requests from loopback only",
    )
    http_host: str = Field(default="127.0.0.1", description="address the HTTP API listens on")
    http_port: int = Field(default=8000, ge=0, le=65535, description="port of the HTTP API")
    topic_events: str = Field(default="lead-events", description="input events (Segment calls)")
    topic_transitions: str = Field(
        default="lead-status-transitions", description="lead stage changes (out)"
    )
    topic_account_transitions: str = Field(
        default="account-status-transitions", description="account stage changes (out)"
    )
    topic_notifications: str = Field(
        default="sales-notifications", description="sales notifications (out)"
    )
    topic_erasures: str = Field(
        default="lead-erasures",
        description="one record per erased lead, naming it, so downstream systems erase "
        "it too (out)",
    )
    topic_dlq: str = Field(
        default="lead-events-dlq",
        description="refused input, unchanged, with reason headers (out)",
    )
    topic_feedback: str = Field(default="sales-feedback", description="sales outcomes (in)")
    topic_partitions: int = Field(
        default=6,
        ge=1,
        le=1024,
        description="partitions of the topics the service creates: the unit of parallelism "
        "for scale-out",
    )
    consumer_group: str = Field(
        default="leadscore", description="consumer group shared by all instances"
    )
    batch_max_records: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="records scored per database transaction: 2,000 keep a transaction well "
        "under a second on a small machine while sharing out its round trips",
    )
    consumer_lanes: int = Field(
        default=1,
        ge=1,
        le=16,
        description="batches of lead events scored side by side, each lane on its own "
        "partitions (partition number modulo the lanes), so one lane's Python work overlaps "
        "another's database round trips; order per partition is kept",
    )
    lead_cache_size: int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="leads kept in memory after a write; met again, a lead is read in full "
        "only when its stored row version is newer than the copy's. `0` reads every lead "
        "from the database, which is as fast on a workload where most leads come back "
        "rarely (see Performance history)",
    )
    batch_timeout_ms: int = Field(
        default=20,
        ge=0,
        le=10_000,
        description="how long the broker waits for a batch to fill: short, so a lone hot "
        "event is not held back",
    )
    producer_linger_ms: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="the producer's batching delay: a few ms gather records without hurting "
        "latency",
    )
    kafka_enable_idempotence: bool = Field(
        default=True,
        description="the relay's producer numbers its batches, so a send retried after a "
        "lost answer is not written twice (off by itself on Tansu, which has no idempotent "
        "producer)",
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        le=300_000,
        description="how long the group waits for a silent instance before handing its "
        "partitions to the others (heartbeats go at a third of it)",
    )
    kafka_group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="static group membership: an instance restarted under the same id takes "
        "its partitions back at once, without a rebalance or waiting out the dead member's "
        "session. Give each instance its own stable id (a StatefulSet pod name; two live "
        "instances with one id fence each other); `make run` with the embedded broker uses "
        "`leadscore-local`",
    )
    outbox_batch: int = Field(
        default=2000, ge=1, le=100_000, description="records the relay publishes per round"
    )
    outbox_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="how often the relay looks for work other instances queued (each "
        "commit of its own instance wakes it at once)",
    )
    outbox_retention_hours: float = Field(
        default=24, gt=0, description="how long published outbox rows are kept"
    )
    sla_check_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="how often follow-up deadlines are checked: a breach is reported at "
        "most this late",
    )
    history_retention_days: float = Field(
        default=400,
        gt=0,
        description="how long each lead's scored events are kept (re-scoring and impact "
        "reports replay them); history is partitioned by month of event time and a month is "
        "dropped whole once all of it is older than this",
    )
    lead_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="a lead with no event for this long is erased whole, traits and history "
        "and all, as an erasure request made by `retention` (not suppressed: a later event "
        "starts a new lead); unset keeps leads until erased on request. History alone is "
        "kept for `history_retention_days`",
    )
    retrain_every_days: float | None = Field(
        default=None,
        gt=0,
        le=366,
        description="train the active version's learned score (`retrain_score`, on "
        "`retrain_target` outcomes of the last year's handoffs) this often, publish the "
        "result as a new version and start it as the challenger; it is never activated by "
        "the schedule. Unset: train by hand only",
    )
    retrain_score: str = Field(
        default="likelihood",
        pattern=r"^[a-z][a-z0-9_]{0,39}$",
        description="the learned score the schedule trains",
    )
    retrain_target: Literal["won", "qualified"] = Field(
        default="won", description="the outcome the schedule's training learns"
    )
    erasure_check_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="how often erasure requests taken by other instances are looked for "
        "(a request taken by this instance starts at once)",
    )
    synchronous_commit: bool = Field(
        default=True,
        description="batches wait for the disk before they count as done. Off is faster, "
        "but a database crash can then lose acknowledged batches; the consumer goes back to "
        "the stored offsets after any database error, which covers that only when the crash "
        "is noticed (see Reliability)",
    )
    log_check_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="how often a running consumer checks that the broker still has the log "
        "it scored",
    )
    max_record_bytes: int = Field(
        default=900 * 1024,
        ge=1024,
        le=100 * 1024 * 1024,
        description="largest record the relay publishes; larger DLQ copies are stored cut to "
        "this size (Kafka refuses records over its `message.max.bytes`, 1 MiB by default)",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=100 * 1024 * 1024,
        description="largest HTTP request body (a rule set, a simulation, an ingest batch); "
        "larger get 413",
    )
    request_cpu_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="how long a CPU-heavy request (simulation, rule-set validation) may run "
        "on its worker thread",
    )
    console_idle_minutes: float = Field(
        default=30.0,
        gt=0,
        le=24 * 60,
        description="a console session ends when it has been idle this long",
    )
    console_session_hours: float = Field(
        default=8.0,
        gt=0,
        le=24 * 30,
        description="a console session ends after this long, however active",
    )
    console_secure_cookie: bool = Field(
        default=False,
        description="send the console's cookie over HTTPS only: set it wherever the console "
        "is reached through TLS",
    )
    allowed_hosts: str = Field(
        default="",
        description="further `Host` names the service answers to, comma-separated "
        "(`.example.com` admits subdomains, `*` any name). The loopback names, the listening "
        "address and IP literals are always admitted; any other Host gets 421, so a "
        "DNS-rebinding page can neither read nor write (see Access control and security)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="the lowest level logged"
    )
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="`text` (a line a person reads), `json` (one object per line), or "
        "`auto`: text on a terminal, JSON otherwise",
    )
    secrets_key: SecretStr | None = Field(
        default=None,
        description="Fernet key that encrypts webhook secrets and CRM tokens at rest; unset, "
        "a key is made in the data folder (fit for one instance only)",
    )
    suppression_key: SecretStr | None = Field(
        default=None,
        description="secret the suppression list's keyed hashes of erased people's ids and "
        "addresses are made with (any long random text; every instance needs the same one, "
        "and changing it lets suppressed people back in); unset, a key is made in the data "
        "folder (fit for one instance only)",
    )
    outbound_allow_private: bool = Field(
        default=False,
        description="allow endpoint URLs on loopback, private, link-local or other "
        "non-public addresses (a test receiver on this machine, say)",
    )
    outbound_allow_http: bool = Field(
        default=False, description="allow endpoint URLs over plain http"
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="one delivery's whole exchange, connection to last byte",
    )
    webhook_backoff_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="a failed delivery's retries wait this base times 2^(n-1), capped, with "
        "jitter; an endpoint's `Retry-After` is honoured within the cap",
    )
    webhook_backoff_cap_seconds: float = Field(
        default=3600.0, gt=0, le=86400, description="the longest wait between retries"
    )
    webhook_concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        description="deliveries in flight per endpoint and instance (each to a different "
        "lead or account)",
    )
    webhook_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often the dispatcher looks for deliveries other instances queued "
        "(its own instance's commits wake it at once)",
    )
    webhook_max_endpoints: int = Field(
        default=50, ge=1, le=1000, description="how many endpoints admins may register"
    )

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
