#!/bin/sh
# bench/run.sh — lunasip's benchmark suite, run by `make bench` after the optimized build.
# Part 1: parser throughput, lunasip vs libosip2 (bench/parse_bench.c), plus instruction
# counts under callgrind when valgrind is present. Part 2: OPTIONS answered from Lua over
# UDP vs Kamailio's sl_send_reply, driven by SIPp (bench/sip_bench.py). Part 3: the stateful
# proxy call flow (SIPp uac -> server -> SIPp uas, INVITE 180 200 ACK BYE 200) through lunasip,
# Kamailio (record_route(); t_relay()) and Kamailio routing in Lua (app_lua)
# (bench/sip_bench.py --mode calls). Part 4: the event interface (bench/evi_bench.py): the SIP
# cost of raising one event per OPTIONS to a udp:, a rabbitmq: and a hung tcp: sink (a peer
# that never reads) (vs none), and events delivered per second to each sink kind. Part 5: the
# stream transports (bench/stream_bench.py): the call flow over TCP (lunasip vs Kamailio),
# OPTIONS answered over tcp/tls/ws/wss (bench/streams/streamload.c, Kamailio over TCP beside),
# and full TLS handshakes per second. Method and fairness rules: /work/shared/BENCH.md.
# Raw numbers go to build/bench/, the table to stdout.
#
# Environment: BENCH_QUICK=1 runs short windows (a smoke test, numbers not for quoting);
# BENCH_SKIP_SIP=1, BENCH_SKIP_CALLS=1, BENCH_SKIP_PARSE=1, BENCH_SKIP_EVENTS=1 or
# BENCH_SKIP_STREAMS=1 skip a part; BENCH_CALLGRIND=0 skips callgrind;
# BENCH_CALLS_SERVERS=kamailio,kamailio-lua (say) limits part 3's servers;
# BENCH_EVENTS_SINKS=udp,tcp (say) limits part 4's sink kinds; BENCH_STREAMS_PARTS=calls,msgs,tls
# and BENCH_STREAMS_SERVERS=lunasip,kamailio (say) limit part 5.
set -eu
cd "$(dirname "$0")/.."

OUT=build/bench
LIB=build/rel/liblunasip.a
CC=${CC:-cc}
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then sopt="--quick"; else sopt=""; fi

child=""
cleanup() {
    # Only what this script started, by PID; sip_bench.py stops its servers itself on TERM.
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Runs a command in the background so the traps can stop it, and waits for it.
run() {
    "$@" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

if [ ! -f "$LIB" ] || [ ! -x ./lunasip ]; then
    echo "bench/run.sh: $LIB or ./lunasip missing: run 'make bench'" >&2
    exit 1
fi
mkdir -p "$OUT"
rm -f "$OUT/parse.txt" "$OUT/callgrind.txt" "$OUT/options.json" "$OUT/calls.json" "$OUT/events.json" \
    "$OUT/streams.json" "$OUT/table.txt"
start=$(date +%s)

# The RFC 4475 torture set: every file whose MANIFEST rfc column is 4475, valid or not.
TORTURE=t/data/torture
SET=$(awk -F'\t' 'NR > 1 && $2 == "4475" { print dir "/" $1 }' dir="$TORTURE" "$TORTURE/MANIFEST.tsv")
[ -n "$SET" ] || { echo "bench/run.sh: no RFC 4475 files in $TORTURE/MANIFEST.tsv" >&2; exit 1; }

if [ "${BENCH_SKIP_PARSE:-0}" != 1 ]; then
    echo "== parser: lunasip vs libosip2 ($(echo "$SET" | wc -l) RFC 4475 files, bench/data/invite.sip)"
    # Same flags as the library under test (make bench builds it with -O2 -DNDEBUG).
    # shellcheck disable=SC2046  # the pkg-config output is meant to split into words
    $CC -O2 -DNDEBUG -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE -Isrc \
        -o "$OUT/parse_bench" bench/parse_bench.c "$LIB" -losip2 -losipparser2 \
        $(pkg-config --libs luajit 2>/dev/null || echo -lluajit-5.1) -lev -lm -ldl
    if [ "$QUICK" = 1 ]; then popt="-t 0.2 -r 3"; else popt="-t 1 -r 5"; fi
    # shellcheck disable=SC2086
    run "$OUT/parse_bench" $popt bench/data/invite.sip $SET > "$OUT/parse.txt"
    grep -E '^(check|run|ratio)' "$OUT/parse.txt" | sed 's/^/  /'

    if [ "${BENCH_CALLGRIND:-1}" != 0 ] && command -v valgrind >/dev/null 2>&1; then
        echo "== parser: instructions per message (callgrind, fixed iterations)"
        for c in invite set; do
            if [ "$c" = invite ]; then n=2000; else n=100; fi
            for p in lunasip osip; do
                f="$OUT/callgrind.$c.$p.out"
                # shellcheck disable=SC2086
                run valgrind --tool=callgrind --callgrind-out-file="$f" --collect-atstart=no \
                    --toggle-collect="loop_$p" "$OUT/parse_bench" -n "$n" -p "$p" -c "$c" \
                    bench/data/invite.sip $SET > "$OUT/callgrind.$c.$p.log" 2>&1
                msgs=$(sed -n 's/^fixed .* msgs=\([0-9]*\).*/\1/p' "$OUT/callgrind.$c.$p.log")
                ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$f")
                [ -n "$ir" ] || ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$f")
                echo "callgrind case=$c parser=$p msgs=$msgs ir=$ir instr_per_msg=$((ir / msgs))" \
                    | tee -a "$OUT/callgrind.txt" | sed 's/^/  /'
            done
        done
    fi
fi

if [ "${BENCH_SKIP_SIP:-0}" != 1 ]; then
    echo "== OPTIONS over UDP: lunasip (Lua) vs Kamailio (sl_send_reply), SIPp, interleaved"
    # shellcheck disable=SC2086
    run python3 bench/sip_bench.py --out "$OUT" --lunasip ./lunasip $sopt
fi

if [ "${BENCH_SKIP_CALLS:-0}" != 1 ]; then
    echo "== calls over UDP: lunasip vs Kamailio (record_route; t_relay) and Kamailio app_lua, SIPp uac/uas, interleaved"
    # A lunasip that cannot proxy a call makes its rows n/a; the Kamailio rows still come.
    # shellcheck disable=SC2086
    run python3 bench/sip_bench.py --mode calls --out "$OUT" --lunasip ./lunasip \
        --servers "${BENCH_CALLS_SERVERS:-lunasip,kamailio,kamailio-lua}" $sopt
fi

if [ "${BENCH_SKIP_EVENTS:-0}" != 1 ]; then
    echo "== events: SIP cost of raise_event (none / udp: / rabbitmq: / tcp: hung), then delivery per sink kind"
    # A sink kind whose driver, receiver or broker is missing is reported n/a; the part never
    # stops the suite: the tables of the other parts still come.
    # shellcheck disable=SC2086
    run python3 bench/evi_bench.py --out "$OUT" --lunasip ./lunasip \
        --sinks "${BENCH_EVENTS_SINKS:-udp,unix,tcp,http,flatstore,rabbitmq}" $sopt \
        || echo "bench/run.sh: the events part failed (exit $?); its table is missing" >&2
fi

if [ "${BENCH_SKIP_STREAMS:-0}" != 1 ]; then
    echo "== streams: calls over TCP (lunasip vs Kamailio), OPTIONS over tcp/tls/ws/wss, TLS handshakes"
    # A lunasip without stream listeners makes its cells n/a; the Kamailio cells still come.
    # shellcheck disable=SC2086
    run python3 bench/stream_bench.py --out "$OUT" --lunasip ./lunasip \
        --parts "${BENCH_STREAMS_PARTS:-calls,msgs,tls}" --servers "${BENCH_STREAMS_SERVERS:-lunasip,kamailio}" $sopt \
        || echo "bench/run.sh: the streams part failed (exit $?); its table is missing" >&2
fi

end=$(date +%s)
echo
python3 bench/report.py "$OUT" "$((end - start))" | tee "$OUT/table.txt"
