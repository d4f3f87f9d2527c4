#!/usr/bin/env bash
# Real backends for the integration suites, as plain local processes on
# 127.0.0.1 (no Docker here): Redis, Apache Kafka (single-node KRaft) and
# FerretDB (MongoDB wire protocol) storing its data in PostgreSQL, or in
# SQLite files with FERRETDB_STORAGE=sqlite.
#
#   ci/backends.sh up       install what is missing, start what is not running,
#                           wait until every backend answers (idempotent)
#   ci/backends.sh down     stop what `up` started (idempotent)
#   ci/backends.sh status   print up/down per backend; exit 0 only if all are up
#   ci/backends.sh env      print export lines: eval "$(ci/backends.sh env)"
#
# Everything downloaded, built or written lives in .backends/ at the repo
# root (git-ignored, a cache: delete it to start from scratch):
#   kafka-libs/   broker jars fetched by Maven from ci/kafka/pom.xml
#   bin/          ferretdb-embedded, built from ci/ferretdb/
#   kafka-data/   Kafka log dirs (formatted once)   kafka/  generated config
#   kafka-tls/    test CA, broker and client certificates for the TLS listener
#   pg-data/      PostgreSQL cluster for FerretDB (initialised once)
#   ferretdb-data/ SQLite files (FERRETDB_STORAGE=sqlite)
#   logs/<name>.log    run/<name>.pid
#
# Redis and PostgreSQL come from Debian's packages (installed with apt when
# missing). Ports: REDIS_PORT (6379), KAFKA_PORT (9092),
# KAFKA_CONTROLLER_PORT (9093), PG_PORT (5433), MONGO_PORT (27017).
# BACKENDS_WAIT_SECS bounds each readiness wait (90).
#
# Why PostgreSQL by default: FerretDB v1's SQLite storage evaluates every
# filter, `_id` included, by reading the whole collection, and under load
# its writes fail with SQLITE_BUSY; measured with examples/bench_store, the
# PostgreSQL storage writes buckets 4-5x faster and first messages of a
# conversation 28x faster. The fault tests still run private SQLite ones.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.backends"
HOST=127.0.0.1
REDIS_PORT="${REDIS_PORT:-6379}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_TLS_PORT="${KAFKA_TLS_PORT:-9094}"
MONGO_PORT="${MONGO_PORT:-27017}"
PG_PORT="${PG_PORT:-5433}"
FERRETDB_STORAGE="${FERRETDB_STORAGE:-postgresql}"
WAIT_SECS="${BACKENDS_WAIT_SECS:-90}"

KAFKA_LIBS="$CACHE/kafka-libs"
KAFKA_CONF="$CACHE/kafka"
KAFKA_DATA="$CACHE/kafka-data"
KAFKA_TLS="$CACHE/kafka-tls"
FERRET_BIN="$CACHE/bin/ferretdb-embedded"
FERRET_DATA="$CACHE/ferretdb-data"
LOGS="$CACHE/logs"
RUN="$CACHE/run"

case "$FERRETDB_STORAGE" in
  postgresql) BACKENDS=(redis kafka postgresql ferretdb) ;;
  sqlite) BACKENDS=(redis kafka ferretdb) ;;
  *)
    echo "[backends] error: FERRETDB_STORAGE must be postgresql or sqlite, got '$FERRETDB_STORAGE'" >&2
    exit 2
    ;;
esac

log() { printf '[backends] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

sha() { cat "$@" | sha256sum | cut -d' ' -f1; }

# TCP connect test with bash's /dev/tcp, bounded by `timeout`.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

port_of() {
  case "$1" in
    redis) echo "$REDIS_PORT" ;;
    kafka) echo "$KAFKA_PORT" ;;
    postgresql) echo "$PG_PORT" ;;
    ferretdb) echo "$MONGO_PORT" ;;
  esac
}

# A word that must appear in the command line of the process in the pid
# file, so that a recycled pid is never mistaken for (or killed as) ours.
signature_of() {
  case "$1" in
    redis) echo "redis-server" ;;
    kafka) echo "kafka.Kafka" ;;
    postgresql) echo "postgres" ;;
    ferretdb) echo "ferretdb-embedded" ;;
  esac
}

# Prints the pid of the backend we started, if it is still alive.
our_pid() {
  local name="$1" pidfile="$RUN/$1.pid" pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$(signature_of "$name")" || return 1
  # a zombie is not running
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ] || return 1
  echo "$pid"
}

# Start a command detached from this script (own session, no hang-up, stdin
# closed) so it outlives it; remember its pid.
launch() {
  local name="$1"; shift
  mkdir -p "$LOGS" "$RUN"
  {
    echo
    echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) ci/backends.sh starting $name: $*"
  } >>"$LOGS/$name.log"
  # Non-interactive bash has no job control, so the background job is not a
  # process-group leader and setsid execs the command in place: $! is the
  # backend's own pid.
  # fd 9 (the `up` lock) is closed so that the backend does not hold it.
  nohup setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/$name.pid"
}

show_log_tail() {
  local name="$1"
  log "last lines of $LOGS/$name.log:"
  tail -n 40 "$LOGS/$name.log" >&2 2>/dev/null || true
}

# ----------------------------------------------------------------- Redis ---

redis_install() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
  log "installing redis-server and redis-tools (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    redis-server redis-tools >/dev/null
  # Where the package's own service did start (a machine with an init
  # system), stop it: it persists to disk and we want our own instance.
  if command -v service >/dev/null 2>&1 && service redis-server status >/dev/null 2>&1; then
    as_root service redis-server stop >/dev/null 2>&1 || true
  fi
}

redis_ready() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
  else
    port_open "$REDIS_PORT"
  fi
}

redis_start() {
  mkdir -p "$CACHE/redis"
  launch redis redis-server --port "$REDIS_PORT" --bind "$HOST" \
    --save "" --appendonly no --dir "$CACHE/redis" --daemonize no
}

# ----------------------------------------------------------------- Kafka ---

kafka_install() {
  local pom="$ROOT/ci/kafka/pom.xml" want
  want="$(sha "$pom")"
  if [ -f "$KAFKA_LIBS/.stamp" ] && [ "$(cat "$KAFKA_LIBS/.stamp")" = "$want" ]; then
    return 0
  fi
  command -v java >/dev/null 2>&1 || die "java (17+) is required for Kafka"
  command -v mvn >/dev/null 2>&1 || die "mvn is required to fetch the Kafka jars"
  log "fetching Kafka jars from Maven Central (ci/kafka/pom.xml)"
  local tmp="$KAFKA_LIBS.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$LOGS/maven.log" 2>&1 \
    || { show_log_tail maven; die "fetching the Kafka jars failed"; }
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven produced no kafka_2.13 jar"
  echo "$want" >"$tmp/.stamp"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

# A private CA, a broker certificate for 127.0.0.1 and a client certificate
# whose key is encrypted with KAFKA_TLS_KEY_PASSWORD, for the TLS listener
# (mutual TLS) that tests/real_kafka.rs connects to the way kafka.yml's
# tls section configures it. Made once; test material, not secrets.
KAFKA_TLS_KEY_PASSWORD="msgtransfer-test"
kafka_tls_material() {
  [ -s "$KAFKA_TLS/client.key" ] && return 0
  log "making TLS test certificates for Kafka (openssl)"
  local d="$KAFKA_TLS.tmp"
  rm -rf "$d" && mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=msgtransfer test CA" \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$d/broker.key" -out "$d/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/san.ext"
  openssl x509 -req -in "$d/broker.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/san.ext" -out "$d/broker.crt" 2>/dev/null
  # Kafka's PEM keystore: a PKCS#8 key followed by the certificate chain.
  openssl pkcs8 -topk8 -nocrypt -in "$d/broker.key" >"$d/broker.pem"
  cat "$d/broker.crt" "$d/ca.pem" >>"$d/broker.pem"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=msgtransfer" \
    -keyout "$d/client.plain.key" -out "$d/client.csr" 2>/dev/null
  openssl x509 -req -in "$d/client.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -out "$d/client.pem" 2>/dev/null
  openssl pkcs8 -topk8 -v2 aes-256-cbc -in "$d/client.plain.key" \
    -passout "pass:$KAFKA_TLS_KEY_PASSWORD" -out "$d/client.key"
  rm -f "$d/client.plain.key" "$d"/*.csr "$d/san.ext"
  rm -rf "$KAFKA_TLS" && mv "$d" "$KAFKA_TLS"
}

kafka_write_config() {
  mkdir -p "$KAFKA_CONF" "$KAFKA_DATA"
  kafka_tls_material
  cat >"$KAFKA_CONF/server.properties" <<EOF
# Generated by ci/backends.sh: single-node KRaft (broker + controller), tests only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SSL://$HOST:$KAFKA_TLS_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SSL://$HOST:$KAFKA_TLS_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$KAFKA_TLS/broker.pem
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=$KAFKA_TLS/ca.pem
listener.name.ssl.ssl.client.auth=required
log.dirs=$KAFKA_DATA
auto.create.topics.enable=true
num.partitions=8
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
  # Broker log4j (reload4j) configuration: everything to stdout, which
  # launch() sends to .backends/logs/kafka.log.
  cat >"$KAFKA_CONF/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.raft=WARN
EOF
  # Command-line tools: warnings only, to stderr.
  cat >"$KAFKA_CONF/tools-log4j.properties" <<'EOF'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
}

# Run a Kafka class from the cached jars as a short-lived tool.
kafka_tool() {
  java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$KAFKA_CONF/tools-log4j.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

kafka_format_once() {
  [ -f "$KAFKA_DATA/meta.properties" ] && return 0
  local id
  id="$(kafka_tool kafka.tools.StorageTool random-uuid)"
  log "formatting Kafka storage (cluster id $id)"
  kafka_tool kafka.tools.StorageTool format -t "$id" \
    -c "$KAFKA_CONF/server.properties" >>"$LOGS/kafka.log" 2>&1 \
    || { show_log_tail kafka; die "kafka storage format failed"; }
}

kafka_start() {
  mkdir -p "$LOGS"
  kafka_write_config
  kafka_format_once
  launch kafka java -Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$KAFKA_CONF/log4j.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF/server.properties"
}

# A real metadata round trip, not just an open port.
kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  [ -d "$KAFKA_LIBS" ] || return 0 # broker not ours and no tools: the port must do
  kafka_write_config_tools_only
  timeout 30 java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$KAFKA_CONF/tools-log4j.properties" \
    -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$HOST:$KAFKA_PORT" --list >/dev/null 2>&1
}

kafka_write_config_tools_only() {
  [ -f "$KAFKA_CONF/tools-log4j.properties" ] && return 0
  kafka_write_config
}

# ------------------------------------------------------------ PostgreSQL ---

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/postgres" ] && { echo "$d"; return 0; }
  done
  return 1
}

postgresql_install() {
  pg_bin >/dev/null && return 0
  log "installing postgresql (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
  # Where the package started its own cluster (a machine with an init
  # system), leave it: ours listens on PG_PORT.
  pg_bin >/dev/null || die "postgresql installed but no postgres binary found"
}

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user
# the package creates, with its files where that user can reach them.
# (A prefix for a command line, so that launch() can exec it.)
PG_AS=()
if [ "$(id -u)" -eq 0 ]; then
  PG_AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi

pg_data() {
  if [ "$(id -u)" -ne 0 ] || setpriv --reuid=postgres --regid=postgres --init-groups \
    test -x "$CACHE" 2>/dev/null; then
    echo "$CACHE/pg-data"
  else
    echo "/var/tmp/msgtransfer-pg-$(echo "$ROOT" | sha256sum | cut -c1-12)"
  fi
}

postgresql_start() {
  local bin data
  bin="$(pg_bin)"
  data="$(pg_data)"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising a PostgreSQL cluster in $data"
    rm -rf "$data"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
    "${PG_AS[@]}" "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 >>"$LOGS/postgresql.log" 2>&1 \
      || { show_log_tail postgresql; die "initdb failed"; }
  fi
  # Test data only: durability is traded for speed.
  launch postgresql "${PG_AS[@]}" "$bin/postgres" -D "$data" -p "$PG_PORT" -k "$data" \
    -c listen_addresses="$HOST" -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off -c max_connections=200
}

postgresql_ready() {
  port_open "$PG_PORT" || return 1
  command -v psql >/dev/null 2>&1 || return 0
  # FerretDB needs its database.
  psql -h "$HOST" -p "$PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'" 2>/dev/null | grep -q 1 \
    || psql -h "$HOST" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE ferretdb" >/dev/null 2>&1
}

# -------------------------------------------------------------- FerretDB ---

ferretdb_install() {
  local src="$ROOT/ci/ferretdb" want
  want="$(sha "$src/go.mod" "$src/go.sum" "$src/main.go")"
  if [ -x "$FERRET_BIN" ] && [ -f "$FERRET_BIN.stamp" ] && [ "$(cat "$FERRET_BIN.stamp")" = "$want" ]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go (1.24+) is required to build FerretDB"
  log "building ferretdb-embedded (FerretDB v1) from ci/ferretdb (takes a minute or two)"
  mkdir -p "$CACHE/bin"
  # go.sum is checked in: -mod=readonly fails loudly instead of editing it.
  # Pure-Go SQLite (modernc), so no cgo is needed.
  # The binary is cached (with a stamp) and built once, so Go's build cache
  # (most of a gigabyte) is a throwaway folder, removed afterwards.
  local gocache="$CACHE/go-build-cache"
  (cd "$src" &&
    GOCACHE="$gocache" GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 \
      go build -trimpath -ldflags="-s -w" -o "$FERRET_BIN.tmp" .) >"$LOGS/go-build.log" 2>&1 \
    || { show_log_tail go-build; die "building ferretdb-embedded failed"; }
  rm -rf "$gocache"
  mv "$FERRET_BIN.tmp" "$FERRET_BIN"
  echo "$want" >"$FERRET_BIN.stamp"
}

ferretdb_start() {
  if [ "$FERRETDB_STORAGE" = postgresql ]; then
    launch ferretdb "$FERRET_BIN" -listen "$HOST:$MONGO_PORT" \
      -postgresql-url "postgres://postgres@$HOST:$PG_PORT/ferretdb"
  else
    mkdir -p "$FERRET_DATA"
    launch ferretdb "$FERRET_BIN" -listen "$HOST:$MONGO_PORT" -data-dir "$FERRET_DATA"
  fi
}

# Sends an OP_MSG {ping: 1, $db: "admin"} and expects {ok: 1.0}.
mongo_ping() {
  python3 - "$HOST" "$MONGO_PORT" <<'EOF'
import socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])

def cstring(s):
    return s.encode() + b"\0"

elements = (b"\x10" + cstring("ping") + struct.pack("<i", 1)
            + b"\x02" + cstring("$db") + struct.pack("<i", 6) + cstring("admin"))
document = struct.pack("<i", 4 + len(elements) + 1) + elements + b"\0"
body = struct.pack("<I", 0) + b"\0" + document          # flagBits, section kind 0
header = struct.pack("<iiii", 16 + len(body), 1, 0, 2013)  # OP_MSG
with socket.create_connection((host, port), timeout=5) as s:
    s.sendall(header + body)
    reply = b""
    while len(reply) < 4 or len(reply) < struct.unpack("<i", reply[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            break
        reply += chunk
at = reply.find(b"\x01ok\x00")   # ok as a double
sys.exit(0 if at >= 0 and struct.unpack("<d", reply[at + 4:at + 12])[0] == 1.0 else 1)
EOF
}

ferretdb_ready() {
  port_open "$MONGO_PORT" || return 1
  if command -v python3 >/dev/null 2>&1; then
    mongo_ping >/dev/null 2>&1
  fi
}

# ------------------------------------------------------------- commands ---

wait_ready() {
  local name="$1" deadline=$((SECONDS + WAIT_SECS))
  while ! "${name}_ready"; do
    if [ -f "$RUN/$name.pid" ] && ! our_pid "$name" >/dev/null; then
      show_log_tail "$name"
      die "$name exited during start-up"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_log_tail "$name"
      die "$name did not answer on $HOST:$(port_of "$name") within ${WAIT_SECS}s"
    fi
    sleep 1
  done
  log "$name is up on $HOST:$(port_of "$name")"
}

start_unless_running() {
  local name="$1" port
  port="$(port_of "$name")"
  if our_pid "$name" >/dev/null || port_open "$port"; then
    log "$name already running on $HOST:$port"
    return 0
  fi
  rm -f "$RUN/$name.pid"
  log "starting $name on $HOST:$port (log: .backends/logs/$name.log)"
  "${name}_start"
}

cmd_up() {
  mkdir -p "$CACHE" "$LOGS" "$RUN"
  # Two concurrent `up`s (e.g. two test runs) must not race on installs.
  exec 9>"$CACHE/.lock"
  flock 9
  local t0=$SECONDS
  # Start each backend as soon as it is installed so that Kafka boots while
  # FerretDB compiles; then wait for all of them.
  redis_install
  start_unless_running redis
  kafka_install
  start_unless_running kafka
  if [ "$FERRETDB_STORAGE" = postgresql ]; then
    postgresql_install
    start_unless_running postgresql
  fi
  ferretdb_install
  if [ "$FERRETDB_STORAGE" = postgresql ]; then
    wait_ready postgresql
  fi
  start_unless_running ferretdb
  local name
  for name in "${BACKENDS[@]}"; do
    wait_ready "$name"
  done
  log "all backends up ($((SECONDS - t0))s)"
}

stop_one() {
  local name="$1" pid i
  if ! pid="$(our_pid "$name")"; then
    rm -f "$RUN/$name.pid"
    if port_open "$(port_of "$name")"; then
      log "$name: something not started by ci/backends.sh listens on $HOST:$(port_of "$name"); left alone"
    else
      log "$name: not running"
    fi
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  # Kafka's controlled shutdown takes a few seconds.
  for ((i = 0; i < 300; i++)); do
    our_pid "$name" >/dev/null || break
    sleep 0.1
  done
  if our_pid "$name" >/dev/null; then
    log "$name did not stop within 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      our_pid "$name" >/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$RUN/$name.pid"
}

cmd_down() {
  [ -d "$CACHE" ] || { log "nothing to stop"; return 0; }
  local name
  for name in ferretdb postgresql kafka redis; do
    stop_one "$name"
  done
}

cmd_status() {
  local name all=0 pid state
  for name in "${BACKENDS[@]}"; do
    if "${name}_ready"; then
      state=up
    else
      state=down
      all=1
    fi
    if pid="$(our_pid "$name")"; then
      pid=" (pid $pid)"
    elif [ "$state" = up ]; then
      pid=" (not started by ci/backends.sh)"
    else
      pid=""
    fi
    printf '%-11s %-5s %s:%s%s\n' "$name" "$state" "$HOST" "$(port_of "$name")" "$pid"
  done
  return "$all"
}

cmd_env() {
  echo "export KAFKA_BROKERS=$HOST:$KAFKA_PORT"
  echo "export KAFKA_TLS_BROKERS=$HOST:$KAFKA_TLS_PORT"
  echo "export KAFKA_TLS_DIR=$KAFKA_TLS"
  echo "export KAFKA_TLS_KEY_PASSWORD=$KAFKA_TLS_KEY_PASSWORD"
  echo "export REDIS_URL=redis://$HOST:$REDIS_PORT/"
  echo "export MONGODB_URI=mongodb://$HOST:$MONGO_PORT/"
}

usage() {
  sed -n '2,/^set -e/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
