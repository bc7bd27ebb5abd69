"""What the operator commands (`replay`, `status`, `dlq`) share: options, settings, Kafka look-ups, tables.

Every failure a user can cause ends in one line on stderr and a non-zero exit: bad arguments
and settings exit 2 (`UsageError`), an unreachable broker, a missing topic or a refused
operation exit 1 (`OpsError`). No traceback reaches the terminal for either.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from falcon_lake.kafka_config import client_config, consumer_config, producer_config
from falcon_lake.settings import KafkaSettings, SettingsError, load_kafka

# Every network call of an operator command is bounded, so an unreachable broker is reported in ~10 s.
REQUEST_TIMEOUT_S = 10.0
# A read that makes no progress for this long means the broker stopped answering.
READ_STALL_S = 15.0
PRODUCE_TIMEOUT_S = 30.0
# Group states in which members own partitions (classic and KIP-848 consumer groups).
ACTIVE_GROUP_STATES = frozenset({"STABLE", "PREPARING_REBALANCE", "COMPLETING_REBALANCE", "ASSIGNING", "RECONCILING"})
HELP_WIDTH = 79
# Client errors that retrying cannot cure (bad CA, certificate, credentials).
CONFIGURATION_ERRORS = frozenset({KafkaError._SSL, KafkaError._AUTHENTICATION})
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class OpsError(RuntimeError):
    """The command cannot go on (Kafka unreachable, topic missing, refused); str() is one line."""


class UsageError(ValueError):
    """A bad argument or setting; str() is one line naming it."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def parser(prog: str, description: str, epilog: str | None = None) -> OneLineParser:
    """A parser whose description is wrapped and whose epilog (examples, exit codes) is kept as written."""
    return OneLineParser(
        prog=prog,
        description=textwrap.fill(description, HELP_WIDTH),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def subparser(commands: Any, name: str, summary: str, description: str, epilog: str | None = None) -> OneLineParser:
    """A subcommand parser (from add_subparsers()) formatted like `parser`."""
    sub: OneLineParser = commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, HELP_WIDTH),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return sub


def add_kafka_options(target: argparse.ArgumentParser, group: bool = True, dlq: bool = False) -> None:
    """--bootstrap-servers, --topic, [--dlq-topic], [--group], --verbose: overrides of the environment."""
    options = target.add_argument_group(
        "Kafka connection",
        textwrap.fill(
            "Defaults come from the same environment variables as the processes; KAFKA_SECURITY "
            "(plaintext, tls, msk-iam), KAFKA_TLS_CA_FILE, KAFKA_TLS_CERT_FILE, KAFKA_TLS_KEY_FILE, "
            "KAFKA_TLS_KEY_PASSWORD and MSK_REGION choose how to connect.",
            HELP_WIDTH - 2,
        ),
    )
    options.add_argument(
        "--bootstrap-servers", metavar="HOST:PORT[,...]", help="brokers (default: KAFKA_BOOTSTRAP_SERVERS)"
    )
    options.add_argument("--topic", metavar="NAME", help="the events topic (default: KAFKA_TOPIC)")
    if dlq:
        options.add_argument("--dlq-topic", metavar="NAME", help="the dead-letter topic (default: KAFKA_DLQ_TOPIC)")
    if group:
        options.add_argument("--group", metavar="ID", help="the publisher consumer group (default: KAFKA_GROUP_ID)")
    options.add_argument(
        "-v", "--verbose", action="store_true", help="log what the Kafka client does (to stderr), for debugging"
    )


def kafka_settings(args: argparse.Namespace, env: Mapping[str, str]) -> KafkaSettings:
    """KafkaSettings from the environment with the command-line overrides applied."""
    try:
        settings = load_kafka(env)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    overrides: dict[str, Any] = {}
    for option, field in (
        ("bootstrap_servers", "bootstrap_servers"),
        ("topic", "topic"),
        ("dlq_topic", "dlq_topic"),
        ("group", "group_id"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            if not value.strip():
                raise UsageError(f"--{option.replace('_', '-')} is empty")
            overrides[field] = value.strip()
    settings = dataclasses.replace(settings, **overrides)
    if settings.topic == settings.dlq_topic:
        raise UsageError(f"the events topic and the DLQ topic are both {settings.topic!r}: they must differ")
    for variable, path in (
        ("KAFKA_TLS_CA_FILE", settings.tls_ca_file),
        ("KAFKA_TLS_CERT_FILE", settings.tls_cert_file),
        ("KAFKA_TLS_KEY_FILE", settings.tls_key_file),
    ):
        if path and not os.access(path, os.R_OK):
            raise UsageError(f"{variable}={path} cannot be read: give the path of a readable PEM file")
    if settings.security == "msk-iam" and not settings.msk_region and env.get("CLOUDTRAIL_LAKE_REGION"):
        # As the publisher does: with its environment, MSK is in the channel's region.
        settings = dataclasses.replace(settings, msk_region=env["CLOUDTRAIL_LAKE_REGION"].strip())
    return settings


def run(prog: str, command: Callable[[], int]) -> int:
    """Run a command, turning its expected failures into one line on stderr and an exit code."""
    try:
        return command()
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OpsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KafkaException as exc:
        print(f"{prog}: Kafka error: {kafka_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) has gone: stop quietly, as command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def environment(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def kafka_error_text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, KafkaError):
        return str(arg.str())
    return str(arg)


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str  # STABLE, EMPTY, DEAD (never used or deleted), ...
    members: int

    @property
    def active(self) -> bool:
        return self.members > 0 or self.state in ACTIVE_GROUP_STATES


@dataclass(frozen=True)
class Watermarks:
    low: int  # the oldest offset still held
    high: int  # the end: the offset the next record gets

    @property
    def depth(self) -> int:
        return max(0, self.high - self.low)


# Errors that mean the brokers did not answer (as opposed to answering with a refusal).
UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._SSL,
        KafkaError._AUTHENTICATION,
    }
)
# A group coordinator that is loading or moving: the same request succeeds a moment later.
COORDINATOR_BUSY = frozenset(
    {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR}
)


class KafkaOps:
    """The Kafka look-ups of the operator commands, each bounded by REQUEST_TIMEOUT_S.

    Client errors are collected (not logged) so a failure can be reported in one line
    that says why, e.g. "Connection refused" or "certificate verify failed".
    """

    def __init__(self, settings: KafkaSettings, verbose: bool = False) -> None:
        self.settings = settings
        self.errors: list[str] = []
        self._misconfigured = False
        self._logger = logging.getLogger("falcon_lake.librdkafka")
        if verbose:
            logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
        else:
            self._logger.addHandler(logging.NullHandler())
            self._logger.propagate = False
        try:
            self.admin = AdminClient(self.config())
        except ValueError as exc:  # from client_config: already one line naming the setting
            raise UsageError(str(exc)) from None
        except KafkaException as exc:  # librdkafka refused the configuration, e.g. an unreadable CA file
            raise UsageError(f"bad Kafka settings: {kafka_error_text(exc)}") from None

    def _on_error(self, err: KafkaError) -> None:
        self.errors.append(str(err.str()))
        if err.code() in CONFIGURATION_ERRORS:
            self._misconfigured = True
        self._logger.debug("kafka: %s", err.str())

    def config(self, **overrides: Any) -> dict[str, Any]:
        """client_config() for an operator command: errors collected, never creating topics."""
        config = client_config(self.settings)
        config.update({"error_cb": self._on_error, "logger": self._logger, "client.id": "falcon-lake-ops"})
        config.update(overrides)
        return config

    def consumer(self, group_id: str, **overrides: Any) -> Consumer:
        """A consumer that only reads what it is assigned (it never joins the group by itself)."""
        config = consumer_config(self.settings, group_id=group_id, **overrides)
        config.update({"error_cb": self._on_error, "logger": self._logger, "client.id": "falcon-lake-ops"})
        config.setdefault("allow.auto.create.topics", False)
        config.setdefault("fetch.wait.max.ms", 100)  # short reads of a known range: do not linger at the end
        return Consumer(config)

    def producer(self, **overrides: Any) -> Producer:
        """An idempotent producer that gives up on a record after PRODUCE_TIMEOUT_S (never waits forever)."""
        config = producer_config(self.settings, **{"message.timeout.ms": int(PRODUCE_TIMEOUT_S * 1000)})
        config.update({"error_cb": self._on_error, "logger": self._logger, "client.id": "falcon-lake-ops"})
        config.update(overrides)
        return Producer(config)

    def _why(self) -> str:
        self.admin.poll(0.2)  # serves error_cb: the transport errors say why
        for text in reversed(self.errors):
            if "brokers are down" not in text:
                return text
        return self.errors[-1] if self.errors else "no answer"

    def unreachable(self, what: str) -> OpsError:
        return OpsError(
            f"cannot reach Kafka at {self.settings.bootstrap_servers} ({self.settings.security}) to {what}: "
            f"{self._why()}"
        )

    def _result(self, future: Any, what: str) -> Any:
        try:
            return future.result(timeout=REQUEST_TIMEOUT_S + 5)
        except KafkaException as exc:
            raise self.failure(exc, what) from None
        except TimeoutError:
            raise self.unreachable(what) from None

    def failure(self, exc: KafkaException, what: str) -> OpsError:
        """The one-line error for a failed look-up: "cannot reach Kafka" when the brokers did not
        answer (transport, time-out, TLS, authentication), else the broker's own reason."""
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() in UNREACHABLE:
            return self.unreachable(what)
        return OpsError(f"cannot {what}: {kafka_error_text(exc)}")

    def topics(self) -> dict[str, int]:
        """Every topic's partition count; raises OpsError when the brokers do not answer."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            try:
                metadata = self.admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                break
            except KafkaException:
                self.admin.poll(0)  # serves error_cb
                # A TLS or SASL failure will not mend itself: say so now rather than at the deadline.
                if self._misconfigured or time.monotonic() >= deadline:
                    raise self.unreachable("read the cluster metadata") from None
        return {name: len(topic.partitions) for name, topic in metadata.topics.items() if topic.error is None}

    def partitions(self, topic: str, topics: Mapping[str, int] | None = None) -> list[int]:
        counts = self.topics() if topics is None else topics
        if topic not in counts:
            raise OpsError(
                f"topic {topic!r} does not exist on {self.settings.bootstrap_servers} "
                "(check --topic / KAFKA_TOPIC and --bootstrap-servers)"
            )
        return list(range(counts[topic]))

    def watermarks(self, topic: str, partitions: Sequence[int]) -> dict[int, Watermarks]:
        low = self.list_offsets(topic, {p: OffsetSpec.earliest() for p in partitions})
        high = self.list_offsets(topic, {p: OffsetSpec.latest() for p in partitions})
        return {p: Watermarks(low[p], high[p]) for p in partitions}

    def list_offsets(self, topic: str, specs: Mapping[int, OffsetSpec]) -> dict[int, int]:
        """Offsets per partition for the given specs; -1 where a time lies after the last record."""
        if not specs:
            return {}
        futures = self.admin.list_offsets(
            {TopicPartition(topic, p): spec for p, spec in specs.items()}, request_timeout=REQUEST_TIMEOUT_S
        )
        return {tp.partition: int(self._result(f, f"list offsets of {topic}").offset) for tp, f in futures.items()}

    def committed(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, TopicPartition]:
        """The group's committed position per partition (offset < 0: nothing committed).

        Read with a consumer of the group that never joins it, not with the AdminClient: the
        AdminClient's ListConsumerGroupOffsets crashes librdkafka (SIGSEGV in
        rd_kafka_cgrp_op from rd_kafka_handle_OffsetFetch, librdkafka 2.x) when the group
        coordinator answers "load in progress", as a broker does right after it starts; the
        consumer's own offset fetch retries that answer as it should."""
        wanted = [TopicPartition(topic, p) for p in partitions]
        consumer = self.consumer(group)
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        try:
            while True:
                try:
                    found = consumer.committed(wanted, timeout=REQUEST_TIMEOUT_S)
                    break
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    code = error.code() if isinstance(error, KafkaError) else None
                    if code in COORDINATOR_BUSY and time.monotonic() < deadline:
                        time.sleep(0.2)  # a coordinator loading or moving answers again a moment later
                        continue
                    raise self.failure(exc, f"read the committed offsets of group {group!r}") from None
        finally:
            consumer.close()
        return {tp.partition: tp for tp in found}

    def group(self, group: str) -> GroupInfo:
        futures = self.admin.describe_consumer_groups([group], request_timeout=REQUEST_TIMEOUT_S)
        try:
            description = futures[group].result(timeout=REQUEST_TIMEOUT_S + 5)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return GroupInfo(group, "DEAD", 0)
            raise OpsError(f"cannot describe group {group!r}: {kafka_error_text(exc)}") from None
        except TimeoutError:
            raise self.unreachable(f"describe group {group!r}") from None
        state = getattr(description.state, "name", str(description.state))
        return GroupInfo(group, state, len(description.members or []))

    def alter_offsets(self, group: str, offsets: Sequence[TopicPartition]) -> None:
        futures = self.admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, list(offsets))], request_timeout=REQUEST_TIMEOUT_S
        )
        result = self._result(futures[group], f"commit offsets for group {group!r}")
        for tp in result.topic_partitions or []:
            if tp.error is None:
                continue
            if tp.error.code() in (
                KafkaError.UNKNOWN_MEMBER_ID,
                KafkaError.REBALANCE_IN_PROGRESS,
                KafkaError.ILLEGAL_GENERATION,
            ):
                raise OpsError(
                    f"group {group!r} has active members again ({tp.error.str()}): stop every publisher first"
                )
            raise OpsError(f"group {group!r} refused the offset of partition {tp.partition}: {tp.error.str()}")


def read_partition(consumer: Consumer, topic: str, partition: int, start: int, end: int) -> Iterator[Message]:
    """The records of one partition from `start` up to `end` (exclusive), in order."""
    if start >= end:
        return
    consumer.assign([TopicPartition(topic, partition, start)])
    progress = time.monotonic()
    try:
        while True:
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() - progress > READ_STALL_S:
                    raise OpsError(f"reading {topic}[{partition}] from offset {start} stalled for {READ_STALL_S:.0f}s")
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return
                if error.fatal() or not error.retriable():
                    raise OpsError(f"reading {topic}[{partition}]: {error.str()}")
                continue
            progress = time.monotonic()
            offset = msg.offset() or 0
            if offset >= end:
                return
            yield msg
            if offset + 1 >= end:
                return
    finally:
        consumer.unassign()


def committed_offset(tp: TopicPartition | None) -> int | None:
    """A committed offset, or None when the group has none for the partition."""
    if tp is None or tp.offset < 0:
        return None
    return int(tp.offset)


def parse_time(text: str) -> datetime:
    """An ISO-8601 time (`Z` or an offset; no zone means UTC); ValueError names the accepted form."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time such as 2024-05-01T12:00:00Z") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def iso_ms(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """3d4h, 2h5m, 7m30s, 12s: the two largest units."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: numbers right-aligned, text left-aligned, columns two spaces apart."""
    cells = [[("-" if value is None else str(value)) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(row) for row in cells)])


def now_ms() -> int:
    return int(time.time() * 1000)
