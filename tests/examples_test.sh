#!/usr/bin/env bash
# Process A to process B: runs the example pair as separate processes
# against a real h5depotd. B (packet_consumer) starts first and says when
# it is about to wait; only then does A (packet_producer) build and push the
# image. B must then print exactly what A wrote.
# Usage: examples_test.sh H5DEPOTD PRODUCER CONSUMER
set -euo pipefail
h5depotd=$1
producer=$2
consumer=$3
work=$(mktemp -d)
server_pid=
consumer_pid=
cleanup() {
  for pid in $consumer_pid $server_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# The server says where it listens once it is ready.
mkfifo "$work/server.out"
"$h5depotd" --listen= --unix="$work/h5depot.sock" \
  > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
exec 3< "$work/server.out"
read -r -t 60 ready_line <&3 || {
  echo "h5depotd did not start:"; cat "$work/server.err"; exit 1; }
target="unix:$work/h5depot.sock"
[[ "$ready_line" == "h5depotd listening on $target" ]] || {
  echo "unexpected first line from h5depotd: $ready_line"; exit 1; }

# B first. Its first line means it is connected and about to wait for an
# image that nobody has pushed yet.
mkfifo "$work/consumer.out"
"$consumer" "$target" run-42/packet 120 > "$work/consumer.out" &
consumer_pid=$!
exec 4< "$work/consumer.out"
read -r -t 60 first_line <&4 || { echo "packet_consumer did not start"; exit 1; }
[[ "$first_line" == "waiting for run-42/packet" ]] || {
  echo "unexpected first line from packet_consumer: $first_line"; exit 1; }

"$producer" "$target" run-42/packet > "$work/producer.out" || {
  echo "packet_producer failed:"; cat "$work/producer.out"; exit 1; }
grep -Eq '^pushed run-42/packet as generation [0-9]+$' "$work/producer.out" || {
  echo "unexpected output from packet_producer:"; cat "$work/producer.out"; exit 1; }

cat <&4 > "$work/consumer.rest"
consumer_status=0
wait "$consumer_pid" || consumer_status=$?
consumer_pid=
[[ $consumer_status -eq 0 ]] || {
  echo "packet_consumer exited with $consumer_status:"; cat "$work/consumer.rest"; exit 1; }

cat > "$work/expected" <<'EXPECTED'
opened run-42/packet
/ @run = 42
/ @source = packet_producer
/detector @name = calorimeter
/detector/adc [4 x 6]:
     0    1    2    3    4    5
   100  101  102  103  104  105
   200  201  202  203  204  205
   300  301  302  303  304  305
/detector/energy [1000]: first 0, last 249.75, sum 124875
/detector/energy @units = GeV
EXPECTED
diff -u "$work/expected" "$work/consumer.rest" || {
  echo "packet_consumer printed something else (diff above)"; exit 1; }
echo "examples test passed"
