#!/usr/bin/env bash
# Sets up this machine (see setup.sh), builds Fizz, starts a local cluster
# (network namespaces with an agent each) and deploys the example app:
# a web tier of 3 replicas behind a VIP, an API it calls by name, and a
# store with a healthcheck that the API waits for. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
bash scripts/setup.sh
echo "building fizz (release)…"
cargo build --release --quiet -p fizz-agent
fizz=$PWD/target/release/fizz

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

"$fizz" dev down >/dev/null 2>&1 || true
step fizz dev up --nodes "$NODES"
"$fizz" dev up --nodes "$NODES"
export FIZZ_SOCKET=/run/fizz-dev/node1.sock

step fizz nodes
"$fizz" nodes

step fizz up -f tests/demo/compose.yaml --wait
"$fizz" up -f tests/demo/compose.yaml --wait

step fizz ps
"$fizz" ps

step "fizz exec -p demo web -- wget -qO- http://web:8080/cgi-bin/hello   (×4)"
for _ in 1 2 3 4; do
    "$fizz" exec -p demo web -- wget -qO- http://web:8080/cgi-bin/hello
done

step "fizz net inspect   (in node 1's namespace)"
nsenter --net=/var/run/netns/fizz-dev-1 -- "$fizz" net inspect --pin-dir /sys/fs/bpf/fizz-dev/node1

cat <<EOT

The cluster keeps running. Try:
  export FIZZ_SOCKET=$FIZZ_SOCKET
  $fizz ps
  $fizz scale -p demo web=5
  $fizz logs -p demo
  $fizz down -p demo
Remove everything with: $fizz dev down
EOT
