#!/usr/bin/env bash
# Lints the workspace: formatting and clippy with warnings as errors. Kept apart from scripts/test.sh so a
# style nit never hides a test result.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
