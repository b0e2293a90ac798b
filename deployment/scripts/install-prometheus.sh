#!/usr/bin/env bash
# Installs Debian's `prometheus` package (promtool + the prometheus server) for the tests, if missing.
# Idempotent. The tests start their own Prometheus on 127.0.0.1; the package's daemon must not run
# (it would listen on 0.0.0.0:9090), so it is kept from starting during the install and stopped and
# disabled afterwards in case it started anyway. Needs root (or sudo) and apt.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-prometheus.sh: need root or sudo to apt-get install prometheus" >&2; exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus.sh: no apt-get here; install promtool/prometheus 2.x yourself" >&2; exit 1
fi

# policy-rc.d exit 101 = "action forbidden": invoke-rc.d won't start the package's service.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces: whatever init system there is, leave the packaged daemon stopped and disabled.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/prometheus ]; then
  $sudo /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  $sudo update-rc.d prometheus disable >/dev/null 2>&1 || true
fi
if command -v pgrep >/dev/null 2>&1; then
  for pid in $(pgrep -u prometheus -x prometheus 2>/dev/null || true); do
    $sudo kill "$pid" 2>/dev/null || true   # only the package's daemon, which runs as user prometheus
  done
fi

promtool --version | head -n 1
