#!/usr/bin/env bash
# Install headless Chromium from Debian's packages for `make book-check` (the browser check of the
# built book). Idempotent: does nothing when /usr/bin/chromium already exists.
# Needs root (or sudo) and Debian/Ubuntu's apt; no browser is downloaded by any other route.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "[browser] /usr/bin/chromium present: $(/usr/bin/chromium --version 2>/dev/null || true)"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "[browser] no apt-get here: install Chromium with your system's package manager" \
         "(Debian/Ubuntu package 'chromium') and re-run 'make book-check'" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "[browser] installing Debian package 'chromium' (one time, ~100 MB)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
