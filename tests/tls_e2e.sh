#!/usr/bin/env bash
# tls_e2e.sh - shoal over tls+tcp:// on loopback: real shoal-server and
# shoal-client processes, logistic regression on MNIST, with a CA and
# certificates that the test makes itself with the openssl command (EC
# P-256, in a temp dir; no key is ever committed).
#
#   tests/tls_e2e.sh BUILD_DIR CASE
#
# CASE (ctest runs each as tls.CASE):
#   rounds   mutual TLS (the server has --tls-ca): 3 clients with
#            certificates from the CA run 3 rounds; every process exits 0,
#            every update is accepted, the metrics show 3 rounds of 3.
#   refused  the same server and one good client, which completes 3 rounds,
#            while four clients try for the whole run and are refused:
#            plain tcp:// on the TLS port; a certificate from another CA; no
#            certificate; and a client that trusts another CA (it refuses
#            the server). None of them ever registers (the server log names
#            only the good client; each prints updates_acked=0), and the
#            server without --tls-ca then admits a client with no
#            certificate (one round).
#   errors   clear messages and exit statuses: a tls+tcp:// URL without
#            certificates, --tls-* without a TLS URL, --tls-cert without
#            --tls-key (2: usage); a missing file, a folder, a file that is
#            not PEM, a key that is not the certificate's, an encrypted key,
#            an expired certificate, a damaged CA file (1: runtime).
# Environment: SHOAL_DATA_DIR (MNIST, default DATA beside the tests), KEEP=1
# keeps the temp dir, TIMEOUT_S (default 120) bounds each run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:?usage: tls_e2e.sh BUILD_DIR rounds|refused|errors}
case_=${2:?usage: tls_e2e.sh BUILD_DIR rounds|refused|errors}
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
data=${SHOAL_DATA_DIR:-$root/data}
limit=${TIMEOUT_S:-120}
pids=""

kill_all() { for p in $pids; do kill -9 "$p" 2>/dev/null || true; done; }
fail() {
	printf 'tls_e2e %s: FAIL: %s\n' "$case_" "$*" >&2
	for f in "$tmp"/*.log "$tmp"/*.out; do
		[ -s "$f" ] && { printf -- '--- %s (tail)\n' "${f##*/}" >&2; tail -12 "$f" >&2; }
	done
	printf 'tls_e2e: files kept in %s\n' "$tmp" >&2
	trap - EXIT
	kill_all
	exit 1
}

for f in "$bin/shoal-server" "$bin/shoal-client"; do
	[ -x "$f" ] || { echo "tls_e2e: $f is missing: build first" >&2; exit 1; }
done
command -v openssl >/dev/null ||
	{ echo "tls_e2e: the openssl command is missing (apt-get install openssl)" >&2; exit 1; }
[ -f "$data/train-images-idx3-ubyte" ] ||
	{ echo "tls_e2e: no MNIST in $data (scripts/setup.sh fetches it)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/shoal-tls-e2e.XXXXXX)
trap 'kill_all; [ "${KEEP:-0}" = 1 ] || rm -rf "$tmp"' EXIT
cd "$tmp"

# ---- certificates ---------------------------------------------------------

ossl() { openssl "$@" 2>>"$tmp/openssl.log" || fail "openssl $1 failed"; }
key() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; chmod 600 "$1"; }
# ca NAME: a self-signed CA, NAME.crt and NAME.key
ca() {
	key "$1.key"
	ossl req -x509 -new -key "$1.key" -sha256 -days 2 -subj "/CN=shoal test $1" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$1.crt"
}
# cert NAME CA CN USAGE [SAN]: NAME.crt signed by CA, with NAME.key
cert() {
	key "$1.key"
	ossl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
	{
		echo "extendedKeyUsage=$4"
		[ -z "${5:-}" ] || echo "subjectAltName=$5"
	} >"$1.ext"
	ossl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -days 2 \
		-sha256 -extfile "$1.ext" -out "$1.crt"
}
ca ca
ca otherca
cert server ca localhost serverAuth "DNS:localhost,IP:127.0.0.1"
for i in 0 1 2; do cert "client$i" ca "client-$i" clientAuth; done
cert stranger otherca stranger clientAuth

# ---- processes ------------------------------------------------------------

common=(--model logreg --data-dir "$data")
# start_server NAME ARGS...: shoal-server on tls+tcp://127.0.0.1:0; sets
# $server (pid) and $url once it listens.
start_server() {
	local name=$1
	shift
	"$bin/shoal-server" --listen tls+tcp://127.0.0.1:0 "${common[@]}" --seed 7 --hold 300 \
		--linger 1500 --round-timeout 60 --compress none --metrics "$tmp/$name.jsonl" \
		--tls-cert server.crt --tls-key server.key "$@" \
		>"$tmp/$name.out" 2>"$tmp/$name.log" &
	server=$!
	pids="$pids $server"
	url=""
	for _ in $(seq 1 300); do
		url=$(sed -nE 's/.*listening on (tls\+tcp:\/\/127\.0\.0\.1:[0-9]+).*/\1/p' \
			"$tmp/$name.log" | head -1)
		[ -n "$url" ] && break
		kill -0 "$server" 2>/dev/null || fail "$name exited before listening"
		sleep 0.1
	done
	[ -n "$url" ] || fail "$name does not listen"
}
# client NAME I N URL ARGS...: a shoal-client in the background; its pid
# in ${pid_NAME}
client() {
	local name=$1 i=$2 n=$3 u=$4
	shift 4
	"$bin/shoal-client" --connect "$u" "${common[@]}" --partition "$i/$n" --seed 7 \
		--name "$name" --compress none "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
	pids="$pids $!"
	printf -v "pid_${name//-/_}" '%s' "$!"
}
# wait_ok PID WHAT: wait (bounded) and require exit status 0
wait_ok() {
	local st=0 end=$((SECONDS + limit))
	while kill -0 "$1" 2>/dev/null; do
		[ $SECONDS -lt $end ] || fail "$2 still running after ${limit}s"
		sleep 0.2
	done
	wait "$1" || st=$?
	[ "$st" -eq 0 ] || fail "$2 exited $st"
}
# expect_rounds FILE R K: R rounds in FILE, each with K updates
expect_rounds() {
	local n
	n=$(grep -c '"round"' "$1" || true)
	[ "$n" -eq "$2" ] || fail "$1 holds $n rounds, want $2"
	[ "$(grep -c "\"clients\":$3," "$1" || true)" -eq "$2" ] ||
		fail "not every round in $1 aggregated $3 updates"
}
good() { echo --tls-ca ca.crt --tls-server-name localhost --tls-cert "$1.crt" --tls-key "$1.key"; }

case "$case_" in
rounds)
	start_server server --rounds 3 --clients-per-round 3 --min-clients 3 --min-reports 3 \
		--tls-ca ca.crt
	for i in 0 1 2; do
		# shellcheck disable=SC2046
		client "client-$i" "$i" 3 "$url" $(good "client$i")
	done
	for i in 0 1 2; do wait_ok "$(eval echo "\$pid_client_$i")" "client-$i"; done
	wait_ok "$server" shoal-server
	pids=""
	for i in 0 1 2; do
		grep -q "rounds_trained=3 updates_acked=3 updates_late=0" "$tmp/client-$i.out" ||
			fail "client-$i: $(cat "$tmp/client-$i.out")"
	done
	expect_rounds server.jsonl 3 3
	grep -q 'clients must present a certificate' server.log ||
		fail "the server did not say that it requires client certificates"
	echo "tls_e2e rounds: 3 rounds over $url with 3 clients (mutual TLS): passed"
	;;

refused)
	start_server server --rounds 3 --clients-per-round 1 --min-clients 1 --min-reports 1 \
		--tls-ca ca.crt
	plain=${url/tls+tcp/tcp}
	client plain 1 3 "$plain"
	client stranger 1 3 "$url" --tls-ca ca.crt --tls-server-name localhost \
		--tls-cert stranger.crt --tls-key stranger.key
	client nocert 2 3 "$url" --tls-ca ca.crt --tls-server-name localhost
	client wrongca 2 3 "$url" --tls-ca otherca.crt --tls-server-name localhost \
		--tls-cert client1.crt --tls-key client1.key
	# Let them try (and be refused) for a while before the rounds run: past
	# the 10 s a client waits for its first reply, so each says it got none.
	sleep 11
	# shellcheck disable=SC2046
	client good 0 3 "$url" $(good client0)
	wait_ok "$pid_good" "the good client"
	wait_ok "$server" shoal-server
	for c in plain stranger nocert wrongca; do
		p=$(eval echo "\$pid_$c")
		kill -0 "$p" 2>/dev/null || fail "$c exited: it should have kept retrying"
		kill -TERM "$p"
		st=0
		wait "$p" || st=$?
		[ "$st" -eq 143 ] || fail "$c exited $st after SIGTERM, want 143"
		grep -q "rounds_trained=0 updates_acked=0" "$c.out" || fail "$c: $(cat "$c.out")"
		grep -q "not answering" "$c.log" || fail "$c never tried to reach the server"
	done
	pids=""
	grep -q "rounds_trained=3 updates_acked=3" good.out || fail "good client: $(cat good.out)"
	expect_rounds server.jsonl 3 1
	n=$(grep -c 'registered as id' server.log || true)
	[ "$n" -eq 1 ] || fail "the server registered $n clients, want only the good one"
	grep -q 'client good registered' server.log || fail "the good client did not register"
	grep -q 'no answer over TLS yet' stranger.log ||
		fail "the refused TLS client gave no hint about certificates"

	# Without --tls-ca the server admits clients without certificates.
	start_server open --rounds 1 --clients-per-round 1 --min-clients 1
	client anyone 0 3 "$url" --tls-ca ca.crt --tls-server-name localhost
	wait_ok "$pid_anyone" "a client without a certificate"
	wait_ok "$server" "shoal-server without --tls-ca"
	pids=""
	expect_rounds open.jsonl 1 1
	grep -q 'clients need no certificate' open.log ||
		fail "the server did not say that it requires no client certificate"
	echo "tls_e2e refused: plain tcp://, a foreign CA's certificate, no certificate and a" \
		"client trusting another CA never registered; the good client ran 3 rounds: passed"
	;;

errors)
	# expect STATUS PATTERN PROGRAM ARGS...: exit status and a line of stderr
	expect() {
		local want=$1 pat=$2 st=0
		shift 2
		"$@" >"$tmp/err.out" 2>"$tmp/err.log" || st=$?
		[ "$st" -eq "$want" ] || fail "'$*' exited $st, want $want: $(cat "$tmp/err.log")"
		grep -qiE -- "$pat" "$tmp/err.log" ||
			fail "'$*' did not say /$pat/: $(cat "$tmp/err.log")"
	}
	srv=("$bin/shoal-server" "${common[@]}" --rounds 1)
	cli=("$bin/shoal-client" "${common[@]}" --partition 0/2)
	tls=tls+tcp://127.0.0.1:1
	echo garbage >garbage.pem
	mkdir folder.pem
	openssl pkey -in client0.key -aes256 -passout pass:secret -out encrypted.key 2>/dev/null
	cat ca.crt | head -c 300 >damaged.crt
	echo "-----END CERTIFICATE-----" >>damaged.crt
	# An expired certificate, signed by the CA (openssl ca takes dates).
	touch index.txt
	echo 01 >serial
	printf '%s\n' '[ca]' 'default_ca = d' '[d]' 'database = index.txt' 'new_certs_dir = .' \
		'serial = serial' 'default_md = sha256' 'policy = p' '[p]' 'commonName = supplied' \
		>ca.cnf
	ossl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in server.csr -notext \
		-startdate 20200101000000Z -enddate 20210101000000Z -out expired.crt

	expect 2 'needs this server.s certificate.*--tls-cert' "${srv[@]}" --listen "$tls"
	expect 2 'no --listen URL is one' "${srv[@]}" --tls-cert server.crt --tls-key server.key
	expect 2 '--tls-cert and --tls-key go together' "${cli[@]}" --connect "$tls" \
		--tls-ca ca.crt --tls-cert client0.crt
	expect 2 'needs --tls-ca' "${cli[@]}" --connect "$tls"
	expect 2 'for tls\+tcp:// servers' "${cli[@]}" --connect tcp://127.0.0.1:1 --tls-ca ca.crt
	expect 1 "certificate file 'nowhere.crt': No such file" "${srv[@]}" --listen "$tls" \
		--tls-cert nowhere.crt --tls-key server.key
	expect 1 "key file 'folder.pem': not a regular file" "${srv[@]}" --listen "$tls" \
		--tls-cert server.crt --tls-key folder.pem
	expect 1 "certificate file 'garbage.pem': not PEM" "${srv[@]}" --listen "$tls" \
		--tls-cert garbage.pem --tls-key server.key
	expect 1 "key file 'client0.key' does not belong to certificate 'server.crt'" \
		"${srv[@]}" --listen "$tls" --tls-cert server.crt --tls-key client0.key
	expect 1 "'encrypted.key': the key is encrypted" "${srv[@]}" --listen "$tls" \
		--tls-cert client0.crt --tls-key encrypted.key
	expect 1 "certificate 'expired.crt' expired on 2021-01-01" "${srv[@]}" --listen "$tls" \
		--tls-cert expired.crt --tls-key server.key
	expect 1 "CA certificate file 'damaged.crt'" "${srv[@]}" --listen "$tls" \
		--tls-cert server.crt --tls-key server.key --tls-ca damaged.crt
	expect 1 "CA certificate file 'garbage.pem': not PEM" "${cli[@]}" --connect "$tls" \
		--tls-ca garbage.pem
	expect 1 "key file 'client1.key' does not belong to certificate 'client0.crt'" \
		"${cli[@]}" --connect "$tls" --tls-ca ca.crt --tls-cert client0.crt \
		--tls-key client1.key
	echo "tls_e2e errors: 14 bad configurations refused with clear messages: passed"
	;;

*)
	echo "tls_e2e: unknown case '$case_' (rounds, refused, errors)" >&2
	exit 2
	;;
esac
