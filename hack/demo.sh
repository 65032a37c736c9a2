#!/usr/bin/env bash
# make demo: start a controller on the embedded store, apply the example
# topology, show it with meridianctl, show what validation says to a bad
# request, re-apply (nothing changes), and stop. Everything lives in a
# temporary directory that is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/bin"
work=$(mktemp -d /tmp/meridian-demo.XXXXXX)
grpc_port=$((20000 + RANDOM % 20000)); http_port=$((grpc_port + 1))
ctl() { "$bin/meridianctl" --endpoint "127.0.0.1:$grpc_port" --token demo-admin-token "$@"; }
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start meridian-controller (store: $work/data)"
"$bin/meridian-controller" --data-dir "$work/data" --tokens-file examples/tokens.yaml \
  --listen-grpc "127.0.0.1:$grpc_port" --listen-http "127.0.0.1:$http_port" --log-level warn 2>"$work/controller.log" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null && break; sleep 0.05; done
curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null || { cat "$work/controller.log"; exit 1; }

step "meridianctl apply -f examples/topology.yaml"
ctl apply -f examples/topology.yaml

step "what the topology became"
ctl vpc list --parent projects/demo
ctl subnet list --parent projects/demo/vpcs/prod
ctl security-group list --parent projects/demo
ctl port list --parent projects/demo

step "the same over HTTP/JSON: curl .../v1/projects/demo/ports/web-1"
curl -s -H 'Authorization: Bearer demo-admin-token' "http://127.0.0.1:$http_port/v1/projects/demo/ports/web-1"; echo

step "a bad request is refused with the fields to fix, and changes nothing"
ctl subnet create projects/demo/vpcs/prod/subnets/bad --cidr 10.0.1.128/25 || true

step "a user may not touch another organisation's project"
"$bin/meridianctl" --endpoint "127.0.0.1:$grpc_port" --token demo-alice-token project get projects/other || true

step "apply again: idempotent"
ctl apply -f examples/topology.yaml

step "audit log (last entries)"
ctl audit list | tail -n 5
