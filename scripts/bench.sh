#!/usr/bin/env bash
# `make bench`: the end-to-end benchmark, then the Go benchmarks.
#
# Builds the benchmark data set (tests/data/synthea-r4-10 replicated
# BENCH_COPIES times under new ids, into .run/bench-data), starts its own
# Azurite, `dist/fhir-sample` on the data set and `dist/handler serve`
# (EXPORT_WORKERS=4, default page size and file size), runs BENCH_RUNS system
# exports with `dist/bulk-client`, and prints for each: resources, bytes,
# kick-off -> manifest ready, kick-off -> last byte downloaded, MB/s, and the
# CPU time of the handler, fhir-sample and Azurite; then the handler's peak
# RSS. It stops everything it
# started on exit or Ctrl-C, then runs the engine and fhirsource benchmarks.
# docs/benchmarks.md explains the figures.
#
# Environment: BENCH_COPIES (10), BENCH_RUNS (3), BENCH_GO=0 to skip the Go
# benchmarks, BENCH_FHIR_ADDR, BENCH_HANDLER_ADDR and AZURITE_BLOB_PORT (the
# first free ports from 127.0.0.1:18090, :17090 and 10250-10252).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run=$root/.run
mkdir -p "$run"

copies=${BENCH_COPIES:-10}
runs=${BENCH_RUNS:-3}
data=$run/bench-data
export AZURITE_PIDFILE=$run/azurite-bench.pid

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# free_ports N FROM prints the first N consecutive free ports from FROM on
# (other runs of Azurite or of this script may hold the usual ones).
free_ports() {
	local n=$1 p=$2 i
	for ((; p < 65000; p += n)); do
		for ((i = 0; i < n; i++)); do port_free $((p + i)) || continue 2; done
		seq "$p" $((p + n - 1))
		return 0
	done
	die "no $n free ports from $2 on"
}
if [[ -z ${AZURITE_BLOB_PORT:-} ]]; then
	read -r -d '' AZURITE_BLOB_PORT AZURITE_QUEUE_PORT AZURITE_TABLE_PORT < <(free_ports 3 10250) || true
fi
export AZURITE_BLOB_PORT AZURITE_QUEUE_PORT=${AZURITE_QUEUE_PORT:-$((AZURITE_BLOB_PORT + 1))} AZURITE_TABLE_PORT=${AZURITE_TABLE_PORT:-$((AZURITE_BLOB_PORT + 2))}
fhir_addr=${BENCH_FHIR_ADDR:-127.0.0.1:$(free_ports 1 18090)}
api_addr=${BENCH_HANDLER_ADDR:-127.0.0.1:$(free_ports 1 17090)}

pids=()
stop_all() {
	local pid
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	pids=()
	bash scripts/azurite/azurite.sh stop 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for bin in handler fhir-sample bulk-client; do
	[[ -x dist/$bin ]] || die "dist/$bin is missing: run make build (make bench does)"
done

wait_url() {
	local url=$1 pid=$2 log=$3 i
	for i in $(seq 1 300); do
		curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "process $pid exited (log: $log)"; }
		sleep 0.1
	done
	die "$url did not answer within 30 s (log: $log)"
}

# now prints the time in seconds with nanoseconds.
now() { date +%s.%N; }
# cpu_seconds prints the user+system CPU time of a process.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
# seconds converts a Go duration ("812ms", "5.123s", "1m2.5s") to seconds.
seconds() {
	awk -v d="$1" 'BEGIN {
		s = 0
		while (match(d, /^[0-9.]+(h|ms|m|s|µs|us|ns)/)) {
			tok = substr(d, 1, RLENGTH); d = substr(d, RLENGTH + 1)
			match(tok, /[0-9.]+/); v = substr(tok, RSTART, RLENGTH); u = substr(tok, RLENGTH + 1)
			if (u == "h") s += v * 3600; else if (u == "m") s += v * 60; else if (u == "s") s += v
			else if (u == "ms") s += v / 1e3; else if (u == "ns") s += v / 1e9; else s += v / 1e6
		}
		print s
	}'
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3), $(date -u +%Y-%m-%dT%H:%MZ), load average $(loadavg)"

echo "== data set: $copies copies of tests/data/synthea-r4-10"
go run ./tests/bench/cmd/make-dataset -src tests/data/synthea-r4-10 -out "$data" -copies "$copies"
want=$(cat "$data"/*.ndjson | wc -l)

echo "== starting Azurite (ports $AZURITE_BLOB_PORT-$AZURITE_TABLE_PORT), fhir-sample ($fhir_addr), handler ($api_addr)"
conn=$(bash scripts/azurite/azurite.sh start)

azurite_pid=$(<"$AZURITE_PIDFILE")

dist/fhir-sample -data "$data" -addr "$fhir_addr" >"$run/bench-fhir-sample.log" 2>&1 &
source_pid=$!
pids+=("$source_pid")
wait_url "http://$fhir_addr/fhir/metadata" "$source_pid" "$run/bench-fhir-sample.log"

AzureWebJobsStorage=$conn FHIR_SERVER_URL="http://$fhir_addr/fhir" AUTH_MODE=none EXPORT_WORKERS=4 EXPORT_RETRY_AFTER=1s LOG_LEVEL=info \
	dist/handler serve -addr "$api_addr" >"$run/bench-handler.log" 2>&1 &
handler_pid=$!
pids+=("$handler_pid")
wait_url "http://$api_addr/metadata" "$handler_pid" "$run/bench-handler.log"

echo "== system export x$runs (bulk-client, Retry-After 1 s; manifest readiness polled every 0.1 s)"
printf '%-4s %9s %10s %10s %10s %6s %5s   %s\n' run resources bytes manifest_s lastbyte_s MB/s files 'CPU s: handler fhir-sample azurite'
for r in $(seq 1 "$runs"); do
	out=$run/bench-export
	rm -rf "$out"
	accepted=$(grep -c '"message":"export accepted"' "$run/bench-handler.log" || true)
	cpu0="$(cpu_seconds "$handler_pid") $(cpu_seconds "$source_pid") $(cpu_seconds "$azurite_pid")"
	t0=$(now)
	dist/bulk-client -base "http://$api_addr" -path '/$export' -out "$out" >"$run/bench-client.txt" 2>&1 &
	client_pid=$!
	pids+=("$client_pid")

	# The job id is in the handler's "export accepted" line; poll its status
	# until the manifest is there, independently of the client's Retry-After.
	job="" manifest=""
	while kill -0 "$client_pid" 2>/dev/null; do
		if [[ -z $job ]]; then
			line=$(grep '"message":"export accepted"' "$run/bench-handler.log" | sed -n "$((accepted + 1))p" || true)
			job=$(grep -o '"job":"[^"]*"' <<<"$line" | head -1 | cut -d'"' -f4 || true)
		fi
		if [[ -n $job && $(curl -s -o /dev/null -w '%{http_code}' "http://$api_addr/jobs/$job") == 200 ]]; then
			manifest=$(now)
			break
		fi
		sleep 0.1
	done
	if ! wait "$client_pid"; then
		cat "$run/bench-client.txt" >&2
		die "bulk-client failed (handler log: $run/bench-handler.log)"
	fi
	cpu1="$(cpu_seconds "$handler_pid") $(cpu_seconds "$source_pid") $(cpu_seconds "$azurite_pid")"
	summary=$(head -1 "$run/bench-client.txt")
	[[ -n $manifest ]] || die "did not see the manifest of job '$job' before the client finished: $summary"
	# "export complete in 5.123s: 41420 resources of 18 types in 18 files, 6 polls, ..."
	lastbyte=$(seconds "$(sed -E 's/^export complete in ([^:]+):.*/\1/' <<<"$summary")")
	resources=$(sed -E 's/.*: ([0-9]+) resources.*/\1/' <<<"$summary")
	files=$(sed -E 's/.* in ([0-9]+) files.*/\1/' <<<"$summary")
	bytes=$(cat "$out"/*.ndjson | wc -c)
	((resources == want)) || die "run $r exported $resources resources, the data set has $want"
	awk -v r="$r" -v n="$resources" -v b="$bytes" -v t0="$t0" -v tm="$manifest" -v tl="$lastbyte" -v c0="$cpu0" -v c1="$cpu1" -v f="$files" \
		'BEGIN { split(c0, a, " "); split(c1, z, " ")
			printf "%-4s %9d %10d %10.2f %10.2f %6.1f %5d   %14.2f %11.2f %8.2f\n", r, n, b, tm - t0, tl, b / tl / 1e6, f, z[1] - a[1], z[2] - a[2], z[3] - a[3] }'
done
printf 'handler peak RSS (VmHWM): %s\n' "$(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$handler_pid/status")"
printf 'fhir-sample peak RSS (VmHWM): %s\n' "$(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$source_pid/status")"
echo "load average after the runs: $(loadavg)"
stop_all

if [[ ${BENCH_GO:-1} != 0 ]]; then
	echo "== go benchmarks (engine over memstore, fhirsource page decoding)"
	go test -run '^$' -bench . -benchmem ./handler/internal/export/ ./handler/internal/fhirsource/ | grep -E '^(Benchmark|ok|FAIL|cpu:)'
fi
