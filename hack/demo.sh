#!/usr/bin/env bash
# make demo, part 1 (the API): start a controller on the embedded store,
# apply the example topology, show it with meridianctl, show what validation
# says to a bad request, re-apply (nothing changes), and stop.
# Part 2 (packets): two nodes as network namespaces, each with its own agent
# and eBPF data path, a VPC with two subnets and three workloads; pings and
# TCP that pass, one connection that a security group drops, and the drop
# reason the agent reports. Everything is torn down on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/bin"
work=$(mktemp -d /tmp/meridian-demo.XXXXXX)
grpc_port=$((20000 + RANDOM % 20000)); http_port=$((grpc_port + 1))
ctl() { "$bin/meridianctl" --endpoint "127.0.0.1:$grpc_port" --token demo-admin-token "$@"; }
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -n "${e2e_run:-}" ] && "$bin/meridian-e2e" down --run "$e2e_run" >/dev/null 2>&1 || true
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

kill "$pid" && wait "$pid" 2>/dev/null || true
pid=

step "part 2: packets. Two nodes (netns), an agent each, three workloads (examples/dataplane.yaml)"
e2e() { "$bin/meridian-e2e" "$@"; }
out=$(e2e up -f examples/dataplane.yaml --log-level info)
e2e_run=$(printf '%s\n' "$out" | sed -n 's/^run \([0-9a-f]*\).*/\1/p' | head -n1)
e2e_run="${TMPDIR:-/tmp}/meridian-e2e-$e2e_run"
printf '%s\n' "$out"

step "ping web-1 -> web-2 (other node, over VXLAN) and web-1 -> db-1 (other subnet)"
e2e exec --run "$e2e_run" web-1 -- ping -c 3 -i 0.2 -W 1 10.0.1.12 | tail -n 2
e2e exec --run "$e2e_run" web-1 -- ping -c 3 -i 0.2 -W 1 10.0.2.21 | tail -n 2

step "TCP: web-1 -> web-2:80 and web-1 -> db-1:5432 are allowed by the security groups"
e2e probe --run "$e2e_run" web-1 web-2 tcp/80
e2e probe --run "$e2e_run" web-1 db-1 tcp/5432

step "TCP: web-1 -> db-1:22 is dropped: group db allows only 5432 from web"
e2e probe --run "$e2e_run" web-1 db-1 tcp/22 || true

step "why: the agent on node-2 logged the drop (reason, port, direction, 5-tuple)"
for _ in $(seq 20); do grep -q '"policy drop"' "$e2e_run/node-2-agent.log" && break; sleep 0.1; done
grep '"policy drop"' "$e2e_run/node-2-agent.log" | tail -n 1 | \
  sed 's/.*"reason":"\([^"]*\)","rule":\([0-9]*\),"port":\([0-9]*\),"direction":"\([^"]*\)".*"proto":\([0-9]*\),"src":"\([^"]*\)","dst":"\([^"]*\)".*/  dropped: reason=\1 rule=\2 (0: no rule allows) port-id=\3 direction=\4 proto=\5 \6 -> \7/'

step "tear down"
e2e down --run "$e2e_run"
e2e_run=
