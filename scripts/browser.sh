#!/usr/bin/env bash
# The browser the storybook test opens pages in: Debian's chromium and chromium-driver, never a
# download. Installs them where it can (root on Debian or Ubuntu) and otherwise says what to
# install; it never fails the command it is part of: under CI=true the browser test itself fails
# with this same fix, outside CI it is skipped.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
fix="apt-get install chromium chromium-driver (as root, on Debian or Ubuntu)"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
   && grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release 2>/dev/null; then
  echo "installing the browser for the storybook test: chromium chromium-driver" >&2
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver) >/dev/null 2>&1; then
    exit 0
  fi
  echo "could not install chromium; the storybook test needs it: $fix" >&2
else
  echo "no chromium found; the storybook test needs it: $fix" >&2
fi
exit 0
