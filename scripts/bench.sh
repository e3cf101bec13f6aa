#!/usr/bin/env bash
# `make bench`: the end-to-end benchmark scenarios of issue 10, then the Go
# benchmarks. docs/benchmarks.md explains the figures.
#
# Scenarios (BENCH_SCENARIOS, default "a b c"), each on a data set built by
# tests/bench/cmd/make-dataset (tests/data/synthea-r4-10 replicated under new
# ids) and served by $DIST/fhir-sample, exported by a fresh `$DIST/handler
# serve` (EXPORT_WORKERS=4) over one Azurite with $DIST/bulk-client:
#   a  BENCH_RUNS (3) system exports of 100 patients (10 copies), no delay;
#   b  120 patients (12 copies; Observation 16,428 resources: issue 10 asks
#      for a type of at least 15,000) behind a 200 ms delay on every search,
#      EXPORT_PAGE_SIZE=100, with windows off (EXPORT_WINDOW_RESOURCES=0) and
#      on (2000), in the same run; both with EXPORT_WORKERS at BENCH_B_WORKERS
#      (48: more than the 41 items, so every window runs at once; with 4 the
#      whole export is at least 500 pages x 200 ms / 4 = 25 s, windows or
#      not), and
#      EXPORT_SOURCE_CONCURRENCY at twice that, since each item has two
#      requests open while it reads a page ahead;
#   c  one system export of 1,000 patients (100 copies, about 540 MB) with
#      the default page, block and file sizes (64 MiB files);
#   d  (not in the default list) scenario a's set with a Provenance per
#      patient (make-dataset -provenance) and a's settings: per run, a system
#      export (Provenance as an ordinary type), then every other type with
#      includeAssociatedData=RelevantProvenanceResources, which must add every
#      Provenance: the difference is the associated phase end to end.
# Each export prints resources, bytes, kick-off -> manifest, kick-off -> last
# byte downloaded, MB/s, the files in the manifest, the CPU seconds of the
# handler, fhir-sample and Azurite during the export (/proc/<pid>/stat), the
# handler's peak RSS (VmHWM) and whether the export holds exactly the data set
# (tests/bench/cmd/check-export). It stops everything it started on exit or
# Ctrl-C.
#
# Environment: BENCH_SCENARIOS, BENCH_RUNS, BENCH_GO=0 to skip the Go
# benchmarks, BENCH_B_DELAY (200ms), BENCH_B_WINDOW (2000), BENCH_B_WORKERS
# (48), BENCH_B_COPIES (12), BENCH_C_COPIES
# (100), DIST (dist), BENCH_RUN_DIR (.run: data sets, exports, logs),
# BENCH_FHIR_ADDR, BENCH_HANDLER_ADDR, AZURITE_BLOB_PORT (QUEUE and TABLE
# follow it) and AZURITE_PIDFILE; the addresses default to the first free
# ports from 127.0.0.1:18090, :17090 and 10250-10252, so it runs alongside
# `make run` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run=${BENCH_RUN_DIR:-$root/.run}
dist=${DIST:-dist}
mkdir -p "$run"

scenarios=${BENCH_SCENARIOS:-a b c}
runs=${BENCH_RUNS:-3}
b_delay=${BENCH_B_DELAY:-200ms}
b_window=${BENCH_B_WINDOW:-2000}
b_workers=${BENCH_B_WORKERS:-48}
b_copies=${BENCH_B_COPIES:-12}
c_copies=${BENCH_C_COPIES:-100}
export AZURITE_PIDFILE=${AZURITE_PIDFILE:-$run/azurite-bench.pid}

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

pids=()
# stop_pid PID stops one process this script started and forgets it, so that
# stop_all never signals a number the system has given to another process.
stop_pid() {
	local keep=() pid
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	for pid in "${pids[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
	pids=("${keep[@]}")
}
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
	[[ -x $dist/$bin ]] || die "$dist/$bin is missing: run make build (make bench does)"
done

# wait_url URL PID LOG [SECONDS] waits for URL to answer (30 s by default;
# fhir-sample loading 540 MB takes minutes on a busy machine).
wait_url() {
	local url=$1 pid=$2 log=$3 limit=${4:-30} i
	for i in $(seq 1 $((limit * 10))); do
		curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "process $pid exited (log: $log)"; }
		sleep 0.1
	done
	die "$url did not answer within $limit s (log: $log)"
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

# vmhwm prints a process's peak resident memory in MiB.
vmhwm() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# dataset NAME COPIES [FLAGS...] builds $run/bench-data-NAME (make-dataset
# skips nothing: it rewrites the folder) and prints its path.
dataset() {
	local dir=$run/bench-data-$1 copies=$2
	shift 2
	go run ./tests/bench/cmd/make-dataset -src tests/data/synthea-r4-10 -out "$dir" -copies "$copies" "$@" >&2
	echo "$dir"
}

# start_source DATA [FLAGS...] starts fhir-sample on a data set.
start_source() {
	local data=$1
	shift
	"$dist/fhir-sample" -data "$data" -addr "$fhir_addr" "$@" >"$run/bench-fhir-sample.log" 2>&1 &
	source_pid=$!
	pids+=("$source_pid")
	wait_url "http://$fhir_addr/fhir/metadata" "$source_pid" "$run/bench-fhir-sample.log" 900
}

# start_handler [NAME=VALUE...] starts a fresh handler (its VmHWM is then
# this scenario's) with the benchmark's settings plus the given ones.
start_handler() {
	env AzureWebJobsStorage="$conn" FHIR_SERVER_URL="http://$fhir_addr/fhir" AUTH_MODE=none EXPORT_WORKERS=4 EXPORT_RETRY_AFTER=1s LOG_LEVEL=info "$@" \
		"$dist/handler" serve -addr "$api_addr" >"$run/bench-handler.log" 2>&1 &
	handler_pid=$!
	pids+=("$handler_pid")
	wait_url "http://$api_addr/metadata" "$handler_pid" "$run/bench-handler.log"
}

header() {
	printf '%-10s %9s %10s %10s %10s %6s %5s   %s\n' export resources bytes manifest_s lastbyte_s MB/s files 'CPU s: handler fhir-sample azurite   handler VmHWM MiB   exact'
}

# export_once LABEL DATA [PATH] runs one export with bulk-client (PATH: the
# kick-off path and query, a system export by default), prints its line and
# fails unless the export holds exactly DATA.
export_once() {
	local label=$1 data=$2 path=${3:-'/$export'} out=$run/bench-export
	rm -rf "$out"
	local accepted cpu0 cpu1 t0 client_pid job="" manifest="" line summary lastbyte resources files bytes exact
	accepted=$(grep -c '"message":"export accepted"' "$run/bench-handler.log" || true)
	cpu0="$(cpu_seconds "$handler_pid") $(cpu_seconds "$source_pid") $(cpu_seconds "$azurite_pid")"
	t0=$(now)
	"$dist/bulk-client" -base "http://$api_addr" -path "$path" -out "$out" >"$run/bench-client.txt" 2>&1 &
	client_pid=$!
	pids+=("$client_pid")

	# The job id is in the handler's "export accepted" line; poll its status
	# until the manifest is there, independently of the client's Retry-After.
	while kill -0 "$client_pid" 2>/dev/null; do
		if [[ -z $job ]]; then
			line=$(grep '"message":"export accepted"' "$run/bench-handler.log" | sed -n "$((accepted + 1))p" || true)
			job=$(grep -o '"job":"[^"]*"' <<<"$line" | head -1 | cut -d'"' -f4 || true)
		fi
		if [[ -n $job && $(curl -s -o "$run/bench-manifest.json" -w '%{http_code}' "http://$api_addr/jobs/$job") == 200 ]]; then
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
	summary=$(grep -m1 '^export complete in' "$run/bench-client.txt" || true)
	[[ -n $manifest ]] || die "did not see the manifest of job '$job' before the client finished: $summary"
	# "export complete in 5.123s: 41420 resources of 18 types in 18 files, 6 polls, ..."
	lastbyte=$(seconds "$(sed -E 's/^export complete in ([^:]+):.*/\1/' <<<"$summary")")
	resources=$(sed -E 's/.*: ([0-9]+) resources.*/\1/' <<<"$summary")
	files=$(sed -E 's/.* in ([0-9]+) files.*/\1/' <<<"$summary")
	bytes=$(cat "$out"/*.ndjson | wc -c)
	if ! exact=$("$run/check-export" -data "$data" -export "$out" 2>&1); then
		say "$label: $exact"
		die "$label: the export does not hold exactly the data set (export kept in $out)"
	fi
	awk -v r="$label" -v n="$resources" -v b="$bytes" -v t0="$t0" -v tm="$manifest" -v tl="$lastbyte" -v c0="$cpu0" -v c1="$cpu1" -v f="$files" -v rss="$(vmhwm "$handler_pid")" \
		'BEGIN { split(c0, a, " "); split(c1, z, " ")
			printf "%-10s %9d %10d %10.2f %10.2f %6.1f %5d   %14.2f %11.2f %8.2f   %17s   yes\n", r, n, b, tm - t0, tl, b / (tm - t0) / 1e6, f, z[1] - a[1], z[2] - a[2], z[3] - a[3], rss }'
}

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3), $(date -u +%Y-%m-%dT%H:%MZ), load average $(loadavg)"
go build -o "$run/check-export" ./tests/bench/cmd/check-export

echo "== starting Azurite (ports $AZURITE_BLOB_PORT-$AZURITE_TABLE_PORT); fhir-sample on $fhir_addr, handler on $api_addr"
conn=$(bash scripts/azurite/azurite.sh start)
azurite_pid=$(<"$AZURITE_PIDFILE")

for scenario in $scenarios; do
	case $scenario in
	a)
		echo "== (a) 100 patients (10 copies), no delay: $runs system exports"
		data=$(dataset a 10)
		start_source "$data"
		start_handler
		header
		for r in $(seq 1 "$runs"); do export_once "a/$r" "$data"; done
		;;
	b)
		echo "== (b) $((b_copies * 10)) patients ($b_copies copies), $b_delay per search, EXPORT_PAGE_SIZE=100, $b_workers workers, $((2 * b_workers)) source requests: windows off, then EXPORT_WINDOW_RESOURCES=$b_window"
		data=$(dataset b "$b_copies")
		start_source "$data" -search-delay "$b_delay"
		header
		start_handler EXPORT_PAGE_SIZE=100 EXPORT_WORKERS="$b_workers" EXPORT_SOURCE_CONCURRENCY="$((2 * b_workers))" EXPORT_WINDOW_RESOURCES=0
		export_once "b/off" "$data"
		stop_pid "$handler_pid"
		start_handler EXPORT_PAGE_SIZE=100 EXPORT_WORKERS="$b_workers" EXPORT_SOURCE_CONCURRENCY="$((2 * b_workers))" EXPORT_WINDOW_RESOURCES="$b_window"
		export_once "b/$b_window" "$data"
		;;
	c)
		echo "== (c) $((c_copies * 10)) patients ($c_copies copies), default page, block and file sizes"
		data=$(dataset c "$c_copies")
		start_source "$data"
		start_handler
		header
		export_once "c" "$data"
		# Every file must stay within 64 MiB (the rule allows the line that
		# crosses it): the sizes of the manifest's files, largest first,
		# downloaded again after the measurement (the manifest has no sizes).
		printf 'largest files (bytes; 64 MiB = 67108864):'
		for u in $(grep -o '"url":"[^"]*"' "$run/bench-manifest.json" | cut -d'"' -f4 | grep '\.ndjson'); do
			curl -sfL -o /dev/null -w '%{size_download}\n' "$u"
		done | sort -rn | head -5 | tr '\n' ' '
		echo
		;;
	d)
		echo "== (d) 100 patients (10 copies) with a Provenance each, no delay: $runs times a system export, then every other type with includeAssociatedData=RelevantProvenanceResources"
		data=$(dataset d 10 -provenance)
		others=$(find "$data" -maxdepth 1 -name '*.ndjson' ! -name Provenance.ndjson -printf '%f\n' | sed 's/\.ndjson$//' | sort | paste -sd, -)
		start_source "$data"
		start_handler
		header
		for r in $(seq 1 "$runs"); do
			export_once "d/plain/$r" "$data"
			export_once "d/assoc/$r" "$data" "/\$export?_type=$others&includeAssociatedData=RelevantProvenanceResources"
		done
		;;
	*) die "unknown scenario $scenario (use a, b, c, d)" ;;
	esac
	printf 'fhir-sample peak RSS (VmHWM): %s MiB; load average after: %s\n' "$(vmhwm "$source_pid")" "$(loadavg)"
	stop_pid "$handler_pid"
	stop_pid "$source_pid"
done
stop_all

if [[ ${BENCH_GO:-1} != 0 ]]; then
	echo "== go benchmarks (engine over memstore, fhirsource page decoding, fhir-sample search pages)"
	go test -run '^$' -bench . -benchmem ./handler/internal/export/ ./handler/internal/fhirsource/ ./tests/fhirsample/ | grep -E '^(Benchmark|ok|FAIL|cpu:)'
fi
