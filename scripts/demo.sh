#!/usr/bin/env bash
# Sets up this machine (see setup.sh), builds Fizz and shows its datapath at
# work on a simulated node. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet -p fizz-agent -p fizz-tests
exec ./target/release/fizz-demo
