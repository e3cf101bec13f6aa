#!/usr/bin/env bash
# Starts and stops the pinned Azurite storage emulator (package.json next to
# this script) for local runs and integration tests.
#
#   azurite.sh start [DIR]        install if needed, start in the background, wait
#                                 for the ports, print the connection string
#   azurite.sh stop               stop the Azurite this script started
#   azurite.sh connection-string  print the connection string for the ports
#
# DIR (default: this script's folder) holds package.json and node_modules.
# Environment: AZURITE_BLOB_PORT (10000), AZURITE_QUEUE_PORT (10001),
# AZURITE_TABLE_PORT (10002), AZURITE_PIDFILE (/tmp/bulkexport-azurite.pid),
# AZURITE_LOCATION (unset: data in memory; a folder: data on disk there).
# Azurite's own output goes to the log file next to the pid file.
# Only the connection string is written to stdout; messages go to stderr.
set -euo pipefail

readonly account_key='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
readonly blob_port="${AZURITE_BLOB_PORT:-10000}"
readonly queue_port="${AZURITE_QUEUE_PORT:-10001}"
readonly table_port="${AZURITE_TABLE_PORT:-10002}"
readonly pidfile="${AZURITE_PIDFILE:-/tmp/bulkexport-azurite.pid}"
readonly logfile="${pidfile%.pid}.log"
readonly start_timeout_s=30

say() { printf 'azurite.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
	sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

connection_string() {
	local base='http://127.0.0.1'
	printf 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=%s;' "$account_key"
	printf 'BlobEndpoint=%s:%s/devstoreaccount1;' "$base" "$blob_port"
	printf 'QueueEndpoint=%s:%s/devstoreaccount1;' "$base" "$queue_port"
	printf 'TableEndpoint=%s:%s/devstoreaccount1;\n' "$base" "$table_port"
}

# running reports whether the pid file names a live Azurite process.
running() {
	[[ -f "$pidfile" ]] || return 1
	local pid
	pid="$(<"$pidfile")"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	grep -qa azurite "/proc/$pid/cmdline" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install() {
	local dir="$1"
	[[ -f "$dir/package.json" ]] || die "no package.json in $dir"
	[[ -d "$dir/node_modules" ]] && return 0
	command -v npm >/dev/null || die "npm not found: install Node.js 20"
	say "installing Azurite in $dir"
	if [[ -f "$dir/package-lock.json" ]]; then
		(cd "$dir" && npm ci --no-audit --no-fund) >&2
	else
		(cd "$dir" && npm install --no-audit --no-fund) >&2
	fi
}

wait_ready() {
	local pid="$1" deadline=$((SECONDS + start_timeout_s)) port
	for port in "$blob_port" "$queue_port" "$table_port"; do
		until port_open "$port"; do
			if ! kill -0 "$pid" 2>/dev/null; then
				tail -n 20 "$logfile" >&2 || true
				die "Azurite exited during start-up (log: $logfile)"
			fi
			((SECONDS < deadline)) || die "Azurite did not open port $port within ${start_timeout_s}s (log: $logfile)"
			sleep 0.1
		done
	done
}

start() {
	local dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
	if running; then
		say "already running (pid $(<"$pidfile"))"
		connection_string
		return 0
	fi
	rm -f "$pidfile"
	install "$dir"
	local bin="$dir/node_modules/.bin/azurite" port
	[[ -x "$bin" ]] || die "$bin missing: remove $dir/node_modules and retry"
	for port in "$blob_port" "$queue_port" "$table_port"; do
		! port_open "$port" || die "port $port is already in use"
	done
	# Data lives in memory unless AZURITE_LOCATION names a folder, which lets a
	# test stop Azurite and start it again on the same data.
	local persistence=(--inMemoryPersistence)
	if [[ -n "${AZURITE_LOCATION:-}" ]]; then
		mkdir -p "$AZURITE_LOCATION"
		persistence=(--location "$AZURITE_LOCATION")
	fi
	# setsid gives Azurite its own process group, so stop can end it and its children.
	setsid "$bin" --silent "${persistence[@]}" --disableTelemetry --skipApiVersionCheck \
		--blobHost 127.0.0.1 --blobPort "$blob_port" \
		--queueHost 127.0.0.1 --queuePort "$queue_port" \
		--tableHost 127.0.0.1 --tablePort "$table_port" \
		>"$logfile" 2>&1 </dev/null &
	local pid=$!
	echo "$pid" >"$pidfile"
	if ! wait_ready "$pid"; then
		stop
		exit 1
	fi
	say "started (pid $pid, log $logfile)"
	connection_string
}

stop() {
	if ! running; then
		say "not running"
		rm -f "$pidfile"
		return 0
	fi
	local pid
	pid="$(<"$pidfile")"
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
	local i
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		say "pid $pid ignored SIGTERM; sending SIGKILL"
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$pidfile"
	say "stopped (pid $pid)"
}

main() {
	(($# >= 1)) || usage
	local cmd="$1"
	shift
	case "$cmd" in
	start) start "$@" ;;
	stop) stop ;;
	connection-string) connection_string ;;
	*) usage ;;
	esac
}

main "$@"
