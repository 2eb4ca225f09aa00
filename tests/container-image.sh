#!/usr/bin/env bash
# The container tests' agent image, built offline from Debian's packages (no registry): a
# debootstrapped minimal root of this machine's release with bash, curl and the CA roots,
# imported into Podman as localhost/airlock-test:bookworm. Also writes tests/podman/containers.conf
# when this host needs one: where crun cannot run containers (cgroups in hybrid mode) it names
# runc, and where root may not raise limits (no CAP_SYS_RESOURCE) it sets the container limits to
# this shell's own. The tests point CONTAINERS_CONF at that file when it exists.
# Needs root (debootstrap) and the network to Debian's mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${AIRLOCK_TEST_IMAGE:-localhost/airlock-test:bookworm}
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p tests/podman
CONF=tests/podman/containers.conf

if ! podman image exists "$IMAGE"; then
    ROOT=$(mktemp -d "${TMPDIR:-/tmp}/airlock-image.XXXXXX")
    trap 'rm -rf "$ROOT"' EXIT
    echo "tests/container-image.sh: debootstrap $SUITE for $IMAGE" >&2
    debootstrap --variant=minbase --include=curl,ca-certificates "$SUITE" "$ROOT" "$MIRROR" \
        >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log"; exit 1; }
    rm -f "$ROOT.log"
    tar -C "$ROOT" -c . | podman import - "$IMAGE" >/dev/null
fi

# What this host needs, found by trying: the defaults, then runc, then runc with this shell's
# limits.
rm -f "$CONF"
try() { podman run --rm --pull never --network none "$IMAGE" true 2>/dev/null; }
if ! try; then
    command -v runc >/dev/null || apt-get install -y -qq runc >/dev/null
    printf '[engine]\nruntime = "runc"\n' >"$CONF"
    if ! CONTAINERS_CONF=$CONF try; then
        # The process limit no higher than pid_max (a higher one is refused here).
        nproc=$(ulimit -u) pid_max=$(cat /proc/sys/kernel/pid_max)
        { [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; } && nproc=$pid_max
        printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
            "$(ulimit -Hn)" "$(ulimit -Hn)" "$nproc" "$nproc" >"$CONF"
        CONTAINERS_CONF=$CONF try || { echo "tests/container-image.sh: podman cannot run $IMAGE here" >&2; \
            CONTAINERS_CONF=$CONF podman run --rm --pull never --network none "$IMAGE" true; exit 1; }
    fi
fi
