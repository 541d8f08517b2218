#!/usr/bin/env bash
# Debian packages the Python environment cannot bring: libb64-0d, which perf_analyzer (from the
# tritonclient wheel) links; haproxy, prometheus (with promtool) and kubectl for the scale-out
# manifests and `make scale-demo`. Installs them when run as root with apt-get; otherwise says
# what to install and carries on (the tests that need them skip with the reason).
set -euo pipefail
PACKAGES=(libb64-0d haproxy prometheus kubectl)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  for pkg in "${missing[@]}"; do  # one at a time: a package this mirror lacks skips only its tests
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; then
      echo "installed $pkg"
    else
      echo "note: could not install $pkg with apt-get; continuing without (the tests that need it skip)" >&2
    fi
  done
else
  echo "note: missing ${missing[*]} (sudo apt-get install ${missing[*]}); continuing without (perf_analyzer / scale-out tests skip)" >&2
fi
