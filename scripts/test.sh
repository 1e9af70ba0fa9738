#!/usr/bin/env bash
# Install what is missing, then run the test suite (the README's test command; CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider --timeout=900 -m "not slow" "$@"
