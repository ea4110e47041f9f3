#!/usr/bin/env bash
# Imports the busybox image that the example app and the tests run
# (Debian's static busybox in an otherwise empty root), when it is missing.
# No registry is needed.
set -euo pipefail
IMAGE=fizz-test/busybox:4
docker image inspect "$IMAGE" >/dev/null 2>&1 && exit 0
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/www" "$root/data"
cp /bin/busybox "$root/bin/busybox"
for applet in sh httpd wget nc sleep cat echo ip ls mkdir nslookup true false env id ps kill \
    hostname cp rm test timeout grep seq touch date head tr chmod printf sed; do
    ln -s busybox "$root/bin/$applet"
done
tar -C "$root" -c . | docker import - "$IMAGE" >/dev/null
echo "imported $IMAGE"
