#!/usr/bin/env bash
# A real, single-node Apache Kafka broker (KRaft, combined broker + controller) on 127.0.0.1,
# run with `java` from the official jars on Maven Central. No Docker, no download site.
#
#   scripts/kafka.sh fetch            resolve the jars into the cache (idempotent)
#   scripts/kafka.sh start            format storage if new, start, wait until it answers metadata
#   scripts/kafka.sh stop             stop the broker started from this data dir (by its PID)
#   scripts/kafka.sh status           say whether it runs
#   scripts/kafka.sh tool NAME ARGS   run a Kafka CLI tool from the same jars, e.g.
#                                     scripts/kafka.sh tool kafka-consumer-groups --bootstrap-server 127.0.0.1:9092 --list
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_DATA_DIR (.run/kafka-PORT),
# KAFKA_HEAP (512m), KAFKA_EXTRA_CONFIG (a properties file appended to the generated one, e.g. a TLS listener),
# KAFKA_EXTRA_LISTENERS (e.g. "SSL://127.0.0.1:9094"), FALCON_LAKE_CACHE (~/.cache/falcon-lake).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")"
CACHE="${FALCON_LAKE_CACHE:-$HOME/.cache/falcon-lake}"
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
DATA_DIR="${KAFKA_DATA_DIR:-$ROOT/.run/kafka-$PORT}"
PID_FILE="$DATA_DIR/kafka.pid"
LOG_FILE="$DATA_DIR/server.log"
HEAP="${KAFKA_HEAP:-512m}"

say() { echo "kafka: $*" >&2; }

fetch() {
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { say "Maven (mvn) is needed to fetch the Kafka jars; install it (apt-get install maven)"; exit 1; }
  command -v java >/dev/null || { say "Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)"; exit 1; }
  say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS" && mkdir -p "$LIBS"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2
  touch "$LIBS/.complete"
}

tool_class() {
  case "$1" in
    kafka-topics) echo org.apache.kafka.tools.TopicCommand ;;
    kafka-consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    kafka-console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    kafka-console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
    kafka-get-offsets) echo org.apache.kafka.tools.GetOffsetShell ;;
    kafka-broker-api-versions) echo org.apache.kafka.tools.BrokerApiVersionsCommand ;;
    kafka-storage) echo kafka.tools.StorageTool ;;
    *) say "unknown tool '$1' (known: kafka-topics kafka-consumer-groups kafka-console-consumer kafka-console-producer kafka-get-offsets kafka-broker-api-versions kafka-storage)"; exit 2 ;;
  esac
}

run_tool() {
  local name="$1"; shift
  fetch
  local cls; cls="$(tool_class "$name")"
  exec java -Xmx256m -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2-tools.properties" \
       -cp "$LIBS/*" "$cls" "$@"
}

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid; pid="$(cat "$PID_FILE")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"; return 0
  fi
  say "removing stale PID file $PID_FILE"
  rm -f "$PID_FILE"; return 1
}

write_config() {
  local listeners="PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
  local advertised="PLAINTEXT://127.0.0.1:$PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL"
  if [ -n "${KAFKA_EXTRA_LISTENERS:-}" ]; then
    listeners="$listeners,$KAFKA_EXTRA_LISTENERS"; advertised="$advertised,$KAFKA_EXTRA_LISTENERS"
  fi
  cat > "$DATA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$DATA_DIR/data
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
EOF
  if [ -n "${KAFKA_EXTRA_CONFIG:-}" ]; then cat "$KAFKA_EXTRA_CONFIG" >> "$DATA_DIR/server.properties"; fi
}

answers_metadata() {
  java -Xmx128m -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2-tools.properties" -cp "$LIBS/*" \
       org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$PORT" --list >/dev/null 2>&1
}

start() {
  fetch
  local pid
  if pid="$(running_pid)"; then
    say "already running (pid $pid) on 127.0.0.1:$PORT, reusing it"; return 0
  fi
  mkdir -p "$DATA_DIR"
  write_config
  if [ ! -f "$DATA_DIR/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$(java -Xmx128m -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2-tools.properties" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)"
    java -Xmx256m -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2-tools.properties" -cp "$LIBS/*" \
         kafka.tools.StorageTool format -t "$cluster_id" -c "$DATA_DIR/server.properties" >/dev/null
  fi
  say "starting Apache Kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$PORT, data in $DATA_DIR, log $LOG_FILE"
  # setsid: the broker outlives the shell that started it and is stopped only by its PID.
  setsid java -Xms128m -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
       -Dkafka.logs.dir="$DATA_DIR" -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2-broker.properties" \
       -cp "$LIBS/*" kafka.Kafka "$DATA_DIR/server.properties" >"$DATA_DIR/stdout.log" 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
      say "the broker exited during start; last lines of $LOG_FILE and stdout:"
      tail -n 20 "$LOG_FILE" "$DATA_DIR/stdout.log" >&2 || true
      rm -f "$PID_FILE"; exit 1
    fi
    if grep -q "Kafka Server started" "$LOG_FILE" 2>/dev/null && answers_metadata; then
      say "ready on 127.0.0.1:$PORT (pid $(cat "$PID_FILE"))"; return 0
    fi
    sleep 0.5
  done
  say "not ready after ${KAFKA_START_TIMEOUT:-90}s; see $LOG_FILE"; exit 1
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then say "not running (data dir $DATA_DIR)"; return 0; fi
  say "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; say "stopped"; return 0; }
    sleep 0.5
  done
  say "still running after 30s, killing"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if pid="$(running_pid)"; then echo "running pid $pid on 127.0.0.1:$PORT"; else echo "not running"; exit 1; fi ;;
  tool) shift; [ $# -ge 1 ] || { say "usage: kafka.sh tool NAME [ARGS...]"; exit 2; }; run_tool "$@" ;;
  *) echo "usage: $0 {fetch|start|stop|status|tool NAME ARGS...}" >&2; exit 2 ;;
esac
