#!/usr/bin/env bash
# The daemon's throughput and latency on the real backends, beside the
# ceilings of the backends themselves on the same machine:
#
#   ci/bench-daemon.sh [messages] [conversations] [seed]     (200000 2000 1)
#
# Brings the backends up (ci/backends.sh), builds the release binary, then
# on topics, consumer groups, a Redis database (15, emptied) and a Mongo
# database of this run's own (so earlier traffic cannot mix in):
#   1. starts `msgtransfer run -c config` in the background,
#   2. `msgtransfer load --wait`: produces the traffic and waits until the
#      daemon persisted it; prints msg/s from first produce to last
#      persisted and p50/p99 produce->persisted latency,
#   3. `msgtransfer audit`: every message accounted for, 0 anomalies,
#   4. SIGTERM to the daemon,
#   5. the ceilings: Kafka's ProducerPerformance (600-byte records,
#      acks=all, idempotent), redis-benchmark (SET, HSET, INCR; pipelined
#      16) and examples/bench_store (bucket writes through our MongoStore).
# Exits non-zero if the audit finds anything.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES="${1:-200000}"
CONVERSATIONS="${2:-2000}"
SEED="${3:-1}"

ci/backends.sh up
eval "$(ci/backends.sh env)"
cargo build --release --locked --bin msgtransfer --example bench_store

run="bench$(date +%s)"
work="$(mktemp -d)"
export IMENV_KAFKA_TOREDISTOPIC="$run.toRedis" IMENV_KAFKA_TOMONGOTOPIC="$run.toMongo"
export IMENV_KAFKA_TOPUSHTOPIC="$run.toPush"
export IMENV_KAFKA_TOREDISGROUPID="$run.redis" IMENV_KAFKA_TOMONGOGROUPID="$run.mongo"
export IMENV_OPENIM_MSGTRANSFER_RUSTTRANSFER_DEADLETTERTOPIC="$run.dlq"
export IMENV_REDIS_DB=15 IMENV_MONGODB_DATABASE="$run"
bin="$PWD/target/release/msgtransfer"
kafka() { java -Xmx512m -cp ".backends/kafka-libs/*" "$@"; }

for t in toRedis toMongo toPush dlq; do
  kafka org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BROKERS" \
    --create --topic "$run.$t" --partitions 8 --replication-factor 1 >/dev/null 2>&1
done
redis-cli -n 15 flushdb >/dev/null

echo "== daemon: $MESSAGES messages, $CONVERSATIONS conversations, seed $SEED (run $run)"
"$bin" run -c config >"$work/daemon.log" 2>&1 &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
sleep 2
(cd "$work" && "$bin" load -c "$OLDPWD/config" --messages "$MESSAGES" \
  --conversations "$CONVERSATIONS" --seed "$SEED" --wait 3600 --no-progress)
(cd "$work" && "$bin" audit -c "$OLDPWD/config")
kill -TERM "$daemon"
wait "$daemon" || true
trap - EXIT

echo
echo "== ceilings on this machine"
kafka org.apache.kafka.tools.ProducerPerformance --topic "$run.perf" --num-records 500000 \
  --record-size 600 --throughput -1 \
  --producer-props bootstrap.servers="$KAFKA_BROKERS" acks=all enable.idempotence=true \
  linger.ms=5 batch.size=262144 2>/dev/null | tail -1 | sed 's/^/kafka producer-perf: /'
port="${REDIS_URL#redis://}"
port="${port%%/*}"
port="${port##*:}"
redis-benchmark -p "$port" -n 500000 -P 16 -q -t set,hset,incr | tr '\r' '\n' | grep -v '^$' \
  | sed 's/^/redis-benchmark: /'
./target/release/examples/bench_store | sed 's/^/store: /'
rm -rf "$work"
