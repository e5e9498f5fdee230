#!/usr/bin/env bash
# Install the Debian packages hotshard runs for real: Prometheus (local mode scrapes the fleet
# with it) and HAProxy (the data-plane benchmark compares the router against it). Skips what is
# already there; needs root (or sudo) only when something is missing.
set -euo pipefail
want=()
command -v prometheus >/dev/null 2>&1 || want+=(prometheus)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || want+=(haproxy)
[ ${#want[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "hotshard: please install ${want[*]} with your package manager (apt-get not found)" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "hotshard: installing ${want[*]} from Debian's packages"
$sudo apt-get update -qq
# NB: --no-install-recommends keeps the exporters and their services out; we start Prometheus
# ourselves on 127.0.0.1 with our own configuration.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
# Debian starts packaged services where an init system runs; we want none listening.
for svc in prometheus haproxy; do
  $sudo service "$svc" stop >/dev/null 2>&1 || true
done
