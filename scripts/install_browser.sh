#!/usr/bin/env bash
# Installs the headless browser the label server's end-to-end test drives:
# Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver).
# Idempotent: does nothing when both are already there. Uses sudo when not root.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: chromium/chromedriver missing and apt-get not found; install" \
       "Chromium and a matching chromedriver, or point CHROMIUM_BINARY and CHROMEDRIVER at them" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "install_browser.sh: chromium/chromedriver missing and not root (no passwordless sudo);" \
       "run: sudo apt-get install -y --no-install-recommends chromium chromium-driver" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "install_browser.sh: apt-get finished but chromium or chromedriver is still missing" >&2
  exit 1
fi
