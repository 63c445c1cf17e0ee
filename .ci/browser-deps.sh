#!/usr/bin/env bash
# Install Debian's chromium for tests/test_browser.py, which renders the `charrnn visualize --html`
# page in headless Chromium. Does nothing when /usr/bin/chromium is already there.
# Needs root, or sudo without a password. Without chromium the browser test skips itself.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "browser-deps: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo -n)
else
  echo "browser-deps: chromium is missing and this user cannot install it (not root, no sudo);" \
       "tests/test_browser.py will be skipped" >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser-deps: no apt-get here (not Debian/Ubuntu); install chromium at /usr/bin/chromium by hand" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
${as_root[@]+"${as_root[@]}"} apt-get update -qq
${as_root[@]+"${as_root[@]}"} apt-get install -y -qq chromium
/usr/bin/chromium --version
