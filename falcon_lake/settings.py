"""Settings: read once from the environment at start, frozen, validated.

No other module reads the environment. A bad or missing setting raises SettingsError
with one line that names the variable and says what to do; the CLI prints it and exits 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

FALCON_CLOUDS: dict[str, str] = {
    "us-1": "https://api.crowdstrike.com",
    "us-2": "https://api.us-2.crowdstrike.com",
    "eu-1": "https://api.eu-1.crowdstrike.com",
    "us-gov-1": "https://api.laggar.gcw.crowdstrike.com",
    "us-gov-2": "https://api.us-gov-2.crowdstrike.mil",
}
# Only these clouds name the customer's real cloud in X-Cs-Region; gov clouds are not discoverable.
DISCOVERABLE_CLOUDS = frozenset({"us-1", "us-2", "eu-1"})

CHANNEL_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:cloudtrail:[a-z0-9-]+:(\d{12}):channel/[A-Za-z0-9._/-]+$")
APP_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{1,32}$")
INSECURE_TLS_CONSENT = "i-understand"

KafkaSecurity = Literal["plaintext", "tls", "msk-iam"]


class SettingsError(ValueError):
    """A setting is missing or invalid; str() is one line naming it."""


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    security: KafkaSecurity = "plaintext"
    topic: str = "falcon.events"
    dlq_topic: str = "falcon.events.dlq"
    group_id: str = "falcon-lake-publisher"
    topic_partitions: int = 3
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_key_password: Secret | None = None
    tls_skip_verify: bool = False
    msk_region: str | None = None


@dataclass(frozen=True)
class SsmSettings:
    parameter: str = "last_seen_offsets"
    region: str | None = None
    write_interval_s: float = 5.0


@dataclass(frozen=True)
class OpsSettings:
    metrics_port: int = 0
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class FalconSettings:
    client_id: str | None
    client_secret: Secret | None
    secret_arn: str | None
    secret_client_id_key: str
    secret_client_secret_key: str
    base_url: str
    cloud: str | None  # the named cloud, None when a URL was given
    application_id: str
    member_cid: str | None
    events_start: str  # "earliest", "latest" or a decimal offset
    event_types: tuple[str, ...]
    secrets_region: str | None


def drain_seconds(shutdown_timeout_s: float) -> float:
    """The part of the SIGTERM budget spent draining. The rest is kept for closing the clients, the ops
    server and the interpreter's exit, so that the process is gone before the orchestrator's SIGKILL."""
    return shutdown_timeout_s - min(1.5, shutdown_timeout_s / 4)


@dataclass(frozen=True)
class IngestorSettings:
    falcon: FalconSettings
    kafka: KafkaSettings
    ssm: SsmSettings
    ops: OpsSettings
    shutdown_timeout_s: float = 20.0
    max_buffered_events: int = 20_000


@dataclass(frozen=True)
class FilterSettings:
    preset: str = "gateway"
    event_types: tuple[str, ...] = ()
    include_services: tuple[str, ...] = ()
    exclude_services: tuple[str, ...] = ()
    include_operations: tuple[str, ...] = ()
    exclude_operations: tuple[str, ...] = ()
    max_age_days: float | None = None


@dataclass(frozen=True)
class PublisherSettings:
    kafka: KafkaSettings
    ssm: SsmSettings
    ops: OpsSettings
    channel_arn: str
    cloudtrail_region: str
    external_id: str | None = None
    checksum: bool = True
    filter: FilterSettings = field(default_factory=FilterSettings)
    batch_max_events: int = 100
    batch_max_bytes: int = 1_000_000
    linger_ms: int = 200
    max_in_flight_per_partition: int = 4
    rate_limit_rps: float = 95.0  # requests/s for the whole publisher group (PutAuditEvents: 100/s per account)
    shutdown_timeout_s: float = 20.0
    revoke_timeout_s: float = 10.0
    max_buffered_records: int = 5_000

    @property
    def channel_account(self) -> str:
        match = CHANNEL_ARN_PATTERN.match(self.channel_arn)
        assert match is not None  # validated at load
        return match.group(1)


class _Env:
    """Typed reads of environment variables, each failure naming the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._env.get(name, "").strip()
        return value if value else default

    def required(self, name: str, hint: str) -> str:
        value = self.text(name)
        if value is None:
            raise SettingsError(f"{name} is not set: {hint}")
        return value

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            raise SettingsError(f"{name}={value} is out of range: use a number between {minimum}{upper}")
        return value

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise SettingsError(f"{name}={raw} is too small: use at least {minimum}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean: use true or false")

    def items(self, name: str) -> tuple[str, ...]:
        raw = self.text(name)
        if raw is None:
            return ()
        return tuple(item.strip() for item in raw.split(",") if item.strip())

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.text(name, default) or default).lower()
        if value not in choices:
            raise SettingsError(f"{name}={value!r} is not one of: {', '.join(choices)}")
        return value


def load_kafka(env: Mapping[str, str]) -> KafkaSettings:
    read = _Env(env)
    security = read.choice("KAFKA_SECURITY", "plaintext", ("plaintext", "tls", "msk-iam"))
    skip_verify = read.flag("KAFKA_TLS_SKIP_VERIFY", False)
    if skip_verify and read.text("KAFKA_TLS_ALLOW_INSECURE") != INSECURE_TLS_CONSENT:
        raise SettingsError(
            "KAFKA_TLS_SKIP_VERIFY=true turns off broker certificate checks: "
            f"also set KAFKA_TLS_ALLOW_INSECURE={INSECURE_TLS_CONSENT} if you really mean it"
        )
    ca_file = read.text("KAFKA_TLS_CA_FILE")
    cert_file = read.text("KAFKA_TLS_CERT_FILE")
    key_file = read.text("KAFKA_TLS_KEY_FILE")
    if (cert_file is None) != (key_file is None):
        raise SettingsError("KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE go together: set both or neither")
    if security == "plaintext" and (ca_file or cert_file):
        raise SettingsError("KAFKA_TLS_* files are set but KAFKA_SECURITY=plaintext: set KAFKA_SECURITY=tls")
    key_password = read.text("KAFKA_TLS_KEY_PASSWORD")
    topic = read.text("KAFKA_TOPIC", "falcon.events") or "falcon.events"
    dlq_topic = read.text("KAFKA_DLQ_TOPIC", "falcon.events.dlq") or "falcon.events.dlq"
    if topic == dlq_topic:
        raise SettingsError(f"KAFKA_DLQ_TOPIC must differ from KAFKA_TOPIC (both are {topic!r})")
    return KafkaSettings(
        bootstrap_servers=read.text("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092") or "127.0.0.1:9092",
        security=security,  # type: ignore[arg-type]
        topic=topic,
        dlq_topic=dlq_topic,
        group_id=read.text("KAFKA_GROUP_ID", "falcon-lake-publisher") or "falcon-lake-publisher",
        topic_partitions=read.integer("KAFKA_TOPIC_PARTITIONS", 3, minimum=1),
        tls_ca_file=ca_file,
        tls_cert_file=cert_file,
        tls_key_file=key_file,
        tls_key_password=Secret(key_password) if key_password else None,
        tls_skip_verify=skip_verify,
        msk_region=read.text("MSK_REGION") or read.text("AWS_REGION") or read.text("AWS_DEFAULT_REGION"),
    )


def load_ops(env: Mapping[str, str], default_metrics_port: int) -> OpsSettings:
    read = _Env(env)
    level = (read.text("LOG_LEVEL", "INFO") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(f"LOG_LEVEL={level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return OpsSettings(
        metrics_port=read.integer("METRICS_PORT", default_metrics_port, minimum=0, maximum=65535),
        log_level=level,
        log_format=read.choice("LOG_FORMAT", "text", ("text", "json")),  # type: ignore[arg-type]
    )


def load_ssm(env: Mapping[str, str]) -> SsmSettings:
    read = _Env(env)
    return SsmSettings(
        parameter=read.text("SSM_OFFSETS_PARAMETER", "last_seen_offsets") or "last_seen_offsets",
        region=read.text("SSM_REGION")
        or read.text("CLOUDTRAIL_LAKE_REGION")
        or read.text("AWS_REGION")
        or read.text("AWS_DEFAULT_REGION"),
        write_interval_s=read.number("SSM_WRITE_INTERVAL_SECONDS", 5.0, minimum=0.1),
    )


def resolve_falcon_base_url(value: str) -> tuple[str, str | None]:
    """Map FALCON_CLOUD_REGION (a cloud name or a URL) to (base URL, cloud name or None)."""
    lowered = value.strip().lower().replace("_", "-")
    if lowered in FALCON_CLOUDS:
        return FALCON_CLOUDS[lowered], lowered
    if lowered.startswith(("http://", "https://")):
        return value.strip().rstrip("/"), None
    raise SettingsError(
        f"FALCON_CLOUD_REGION={value!r} is not a Falcon cloud: use one of {', '.join(FALCON_CLOUDS)} or a URL"
    )


def _events_start(read: _Env) -> str:
    start = read.text("EVENTS_START")
    if start is None:
        # The old gateway's names, so a migrating deployment keeps its meaning.
        if read.flag("EVENTS_START_FROM_NEWEST", False):
            return "latest"
        start = read.text("EVENTS_OFFSET", "earliest")
    start = (start or "earliest").lower()
    if start in ("earliest", "latest") or start.isdigit():
        return start
    raise SettingsError(f"EVENTS_START={start!r} is not earliest, latest or a non-negative offset")


def load_ingestor(env: Mapping[str, str]) -> IngestorSettings:
    read = _Env(env)
    secret_arn = read.text("FALCON_SECRET_ARN")
    client_id = read.text("FALCON_CLIENT_ID")
    client_secret = read.text("FALCON_CLIENT_SECRET")
    if secret_arn is None:
        if client_id is None:
            raise SettingsError("FALCON_CLIENT_ID is not set: give the API client id, or FALCON_SECRET_ARN")
        if client_secret is None:
            raise SettingsError("FALCON_CLIENT_SECRET is not set: give the API client secret, or FALCON_SECRET_ARN")
    app_id = read.text("FALCON_APPLICATION_ID", "falconlake") or "falconlake"
    if not APP_ID_PATTERN.match(app_id):
        raise SettingsError(
            f"FALCON_APPLICATION_ID={app_id!r} is invalid: use 1 to 32 letters and digits, nothing else"
        )
    base_url, cloud = resolve_falcon_base_url(read.text("FALCON_CLOUD_REGION", "us-1") or "us-1")
    ssm = load_ssm(env)
    return IngestorSettings(
        falcon=FalconSettings(
            client_id=client_id,
            client_secret=Secret(client_secret) if client_secret else None,
            secret_arn=secret_arn,
            secret_client_id_key=read.text("FALCON_SECRET_CLIENT_ID_KEY", "client_id") or "client_id",
            secret_client_secret_key=read.text("FALCON_SECRET_CLIENT_SECRET_KEY", "client_secret") or "client_secret",
            base_url=base_url,
            cloud=cloud,
            application_id=app_id,
            member_cid=read.text("FALCON_MEMBER_CID"),
            events_start=_events_start(read),
            event_types=read.items("EVENTS_TYPES"),
            secrets_region=read.text("SECRETS_REGION") or ssm.region,
        ),
        kafka=load_kafka(env),
        ssm=ssm,
        ops=load_ops(env, 9464),
        shutdown_timeout_s=read.number("SHUTDOWN_TIMEOUT_SECONDS", 20.0, minimum=1.0),
        max_buffered_events=read.integer("INGEST_MAX_BUFFERED_EVENTS", 20_000, minimum=100),
    )


def load_filter(env: Mapping[str, str]) -> FilterSettings:
    read = _Env(env)
    max_age = read.text("FILTER_MAX_AGE_DAYS")
    return FilterSettings(
        preset=read.choice("FILTER_PRESET", "gateway", ("gateway", "all-user-activity")),
        event_types=read.items("FILTER_EVENT_TYPES"),
        include_services=read.items("FILTER_INCLUDE_SERVICES"),
        exclude_services=read.items("FILTER_EXCLUDE_SERVICES"),
        include_operations=read.items("FILTER_INCLUDE_OPERATIONS"),
        exclude_operations=read.items("FILTER_EXCLUDE_OPERATIONS"),
        max_age_days=read.number("FILTER_MAX_AGE_DAYS", 0.0, minimum=0.0) if max_age else None,
    )


def load_publisher(env: Mapping[str, str]) -> PublisherSettings:
    read = _Env(env)
    channel_arn = read.required(
        "CLOUDTRAIL_LAKE_CHANNEL_ARN",
        "give the ARN of the CloudTrail Lake channel (arn:aws:cloudtrail:...:channel/...)",
    )
    match = CHANNEL_ARN_PATTERN.match(channel_arn)
    if match is None:
        raise SettingsError(
            f"CLOUDTRAIL_LAKE_CHANNEL_ARN={channel_arn!r} is not a channel ARN "
            "(expected arn:aws:cloudtrail:REGION:ACCOUNT:channel/ID)"
        )
    region = read.text("CLOUDTRAIL_LAKE_REGION") or channel_arn.split(":")[3]
    ssm = load_ssm(env)
    if ssm.region is None:
        ssm = SsmSettings(ssm.parameter, region, ssm.write_interval_s)
    kafka = load_kafka(env)
    return PublisherSettings(
        kafka=kafka if kafka.msk_region else KafkaSettings(**{**kafka.__dict__, "msk_region": region}),
        ssm=ssm,
        ops=load_ops(env, 9465),
        channel_arn=channel_arn,
        cloudtrail_region=region,
        external_id=read.text("CLOUDTRAIL_LAKE_EXTERNAL_ID"),
        checksum=read.flag("CLOUDTRAIL_CHECKSUM", True),
        filter=load_filter(env),
        batch_max_events=read.integer("BATCH_MAX_EVENTS", 100, minimum=1, maximum=100),
        batch_max_bytes=read.integer("BATCH_MAX_BYTES", 1_000_000, minimum=10_000, maximum=1_000_000),
        linger_ms=read.integer("BATCH_LINGER_MS", 200, minimum=0, maximum=60_000),
        max_in_flight_per_partition=read.integer("MAX_IN_FLIGHT_PER_PARTITION", 4, minimum=1, maximum=64),
        rate_limit_rps=read.number("PUT_RATE_LIMIT", 95.0, minimum=0.1),
        shutdown_timeout_s=read.number("SHUTDOWN_TIMEOUT_SECONDS", 20.0, minimum=1.0),
        revoke_timeout_s=read.number("REVOKE_TIMEOUT_SECONDS", 10.0, minimum=0.5),
        max_buffered_records=read.integer("PUBLISH_MAX_BUFFERED_RECORDS", 5_000, minimum=100),
    )
