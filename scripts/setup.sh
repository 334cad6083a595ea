#!/usr/bin/env bash
# Create .venv when missing and install visionlab (and, with --dev, the test tools and OS packages).
# Idempotent: a stamp file records what was installed for the current pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
dev=0; [ "${1:-}" = "--dev" ] && dev=1

if [ "$dev" = 1 ] && { [ ! -d /usr/share/datasets/fashion-mnist ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
        || [ ! -x /usr/bin/chromium ]; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # Fashion-MNIST (tests read it) and a PostgreSQL server (the shared-sweep test starts its own) come from the OS;
  # Chromium drives the app's browser test (Playwright, never `playwright install`). Best effort; the tests say
  # what is missing.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist postgresql chromium) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist postgresql chromium (apt)" >&2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.visionlab-$( (cat pyproject.toml; echo "dev=$dev") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  extras=""; [ "$dev" = 1 ] && extras="[dev]"
  .venv/bin/python -m pip install -q -e ".$extras" 2>&1 | grep -v "^WARNING: Location" || true
  if [ "$dev" = 1 ]; then   # MTCNN for the face tests: its metadata pins torch<2.3, so never let pip resolve it
    .venv/bin/python -m pip install -q --no-deps facenet-pytorch 2>&1 | grep -v "^WARNING: Location" || true
  fi
  .venv/bin/python -c "import visionlab, torch, torchvision" # fail loudly when the install did not work
  rm -f .venv/.visionlab-*; touch "$stamp"
fi
