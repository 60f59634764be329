#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the browser tests (tests marked `browser`); does nothing when both are there.
# Installs with apt-get, so it needs root (CI runs as root on a fresh machine).
set -euo pipefail
command -v chromium >/dev/null && command -v chromedriver >/dev/null && exit 0
apt-get update && apt-get install -y chromium chromium-driver
