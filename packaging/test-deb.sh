#!/bin/sh
# Builds the .deb and checks it in a clean Debian root (issue 8): debootstrap a minimal root of
# this machine's Debian release, `apt-get install ./airlock_*.deb` in it, then run
# packaging/test_installed.py there (layout, modes, units, the services started the way their
# units start them, an approved proposal, metrics, reload, remove/reinstall/purge).
# Needs root (debootstrap, chroot) and the network to Debian's mirror and crates.io.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=$(. /etc/os-release && echo "$VERSION_CODENAME")

if ! command -v debootstrap >/dev/null; then
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0
cargo build --locked --release --workspace
cargo deb --no-build
DEB=$(ls -t target/debian/airlock_*.deb | head -1)
NAME=$(basename "$DEB")

mkdir -p target/tmp
ROOT=$(mktemp -d "$PWD/target/tmp/debroot.XXXXXX")
chmod 0755 "$ROOT"   # the root of the new system; mktemp made it 0700
cleanup() {
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill -9 "${p#/proc/}" 2>/dev/null || true
    done
    umount "$ROOT/proc" 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT INT TERM

echo "== debootstrap $SUITE into $ROOT"
debootstrap --variant=minbase --include=python3,curl,openssl,lmdb-utils "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
    || { tail -20 "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
mount -t proc proc "$ROOT/proc"
cp "$DEB" packaging/test_installed.py "$ROOT/tmp/"
echo "== apt-get install ./$NAME"
chroot "$ROOT" apt-get update -qq
chroot "$ROOT" apt-get install -y -q "/tmp/$NAME"
echo "== the installed package"
chroot "$ROOT" python3 /tmp/test_installed.py "/tmp/$NAME"
