#!/usr/bin/env bash
# Install Debian's headless Chromium for the report's browser tests (tests/report).
# Idempotent: does nothing when a Chromium is already on PATH. Needs root (or sudo) and apt.
# Takes about 15 s on the build machines (~100 MB of packages; no browser download by a test tool).
set -euo pipefail

for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "chromium: $(command -v "$name") is installed"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: no apt-get here; install Chromium with your package manager or set" \
       "LINE_CHROMIUM=/path/to/chromium" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium: installed $(chromium --version 2>/dev/null | head -n 1)"
