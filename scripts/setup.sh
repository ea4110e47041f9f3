#!/usr/bin/env bash
# Prepares this machine for Fizz: Debian packages, the Docker engine, bpffs,
# and the eBPF toolchain (nightly rust-src and bpf-linker). Idempotent: each
# step runs only when what it provides is missing. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (Fizz loads eBPF programs and makes network namespaces)" >&2
    exit 1
fi

packages=(iproute2 iptables bpftool tcpdump busybox-static docker.io gnuplot-nox util-linux procps wireguard-tools ethtool)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# bpffs, where the datapath pins its programs and maps.
if ! mount | grep -q "on /sys/fs/bpf type bpf"; then
    mount -t bpf bpf /sys/fs/bpf
fi

# The Docker engine (not running on a fresh machine).
if ! docker info >/dev/null 2>&1; then
    echo "setup: starting dockerd (log: /var/log/fizz-dockerd.log)"
    nohup dockerd >/var/log/fizz-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/fizz-dockerd.log" >&2; exit 1; }
fi

# The image the example app and the tests run.
bash scripts/busybox-image.sh

# The eBPF toolchain; this also builds the eBPF object once.
cargo xtask build-ebpf >/dev/null
echo "setup: ready"
