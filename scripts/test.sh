#!/usr/bin/env bash
# Runs every test: unit tests (no root needed), eBPF program tests through
# BPF_PROG_TEST_RUN, and privileged integration tests in network namespaces.
# Afterwards it checks that the tests left nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Socket programs on the root cgroup (v2) are not named per test: count them
# before and after.
cgroup_progs() {
    local root
    root=$(awk '{ split($0, h, " - "); split(h[1], m, " "); split(h[2], t, " ");
                  if (t[1] == "cgroup2" && m[4] == "/") { print m[5]; exit } }' /proc/self/mountinfo 2>/dev/null || true)
    [ -n "$root" ] || { echo 0; return; }
    bpftool cgroup show "$root" 2>/dev/null | grep -c 'fz_' || true
}
cgroup_before=$(cgroup_progs)
# The integration tests start the `fizz` binary, so it is built first.
cargo build --workspace --all-targets
cargo test --workspace --all-targets 2>&1 | tee target/test.log

# Every test object's name starts with a unique test name (fizz_tests::unique):
# namespaces, links left in this namespace (a local cluster's bridge), Docker
# containers (labelled with their node), temporary directories.
test_name='^fz[0-9a-z]+[A-Z]'
leftovers=$( (ip netns list | grep -E "$test_name" || true
              ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print "link " $2 }' | grep -E "^link ${test_name#^}" || true
              docker ps -a --format '{{.Label "fizz.node"}} (container {{.Names}})' 2>/dev/null | grep -E "$test_name" || true
              find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'fz*' 2>/dev/null | grep -E "/${test_name#^}" || true
              ls /sys/fs/bpf/fizz-test 2>/dev/null || true) )
cgroup_after=$(cgroup_progs)
if [ "$cgroup_after" -gt "$cgroup_before" ]; then
    leftovers="$leftovers
$((cgroup_after - cgroup_before)) socket programs still attached to the root cgroup"
fi
if [ -n "$leftovers" ]; then
    echo "tests left these behind:" >&2
    echo "$leftovers" >&2
    exit 1
fi
echo "no leftovers (namespaces, links, containers, temporary directories, pins, cgroup programs)"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log
