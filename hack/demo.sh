#!/usr/bin/env bash
# make demo, part 1 (the API): start a controller on the embedded store,
# apply the example topology, show it with meridianctl, show what validation
# says to a bad request, re-apply (nothing changes), and stop.
# Part 2 (packets): two nodes as network namespaces, each with its own agent
# and eBPF data path, a VPC with two subnets and three workloads; pings and
# TCP that pass, one connection that a security group drops, and the drop
# reason the agent reports.
# Part 3 (the outside world): a workload node and a gateway node, a
# top-of-rack router running FRR and an "internet" host behind it; an
# elastic IP for the workload, announced by the gateway's agent over BGP:
# the router's kernel routing table shows it, and the internet host pings
# and fetches a page from the workload through it.
# Part 4 (the L4 load balancer): a load balancer with a public VIP over three
# web servers on two nodes; the gateway's XDP program spreads the internet
# host's connections over them with Maglev; the VIP is learned by the router
# over BGP; a stopped web server fails its health check and gets no new
# connection. Everything is torn down on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/bin"
work=$(mktemp -d /tmp/meridian-demo.XXXXXX)
grpc_port=$((20000 + RANDOM % 20000)); http_port=$((grpc_port + 1))
ctl() { "$bin/meridianctl" --endpoint "127.0.0.1:$grpc_port" --token demo-admin-token "$@"; }
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -n "${e2e_run:-}" ] && "$bin/meridian-e2e" down --run "$e2e_run" >/dev/null 2>&1 || true
  for p in "${pids3[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  if [ -n "${frr:-}" ]; then for f in "$frr"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done; rm -rf "$frr"; fi
  for ns in "${netns3[@]:-}"; do [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null || true; done
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

step "part 3: the outside world. A gateway node, a top-of-rack router (FRR) and an internet host (e2e/testdata/outside.yaml)"
pids3=(); netns3=()
out=$(e2e up -f e2e/testdata/outside.yaml --log-level warn)
run_id=$(printf '%s\n' "$out" | sed -n 's/^run \([0-9a-f]*\).*/\1/p' | head -n1)
e2e_run="${TMPDIR:-/tmp}/meridian-e2e-$run_id"
gw_ns="me2e-$run_id-gw-1"; web_ns="me2e-$run_id-web-1"
tor="mdemo-$run_id-tor"; inet="mdemo-$run_id-inet"
nsx() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }
for ns in "$tor" "$inet"; do ip netns add "$ns"; netns3+=("$ns"); nsx "$ns" ip link set lo up; done
# internet host 100.64.0.10 -- 100.64.0.1 tor 172.31.1.1 -- 172.31.1.2 ext0 (gw-1's uplink)
nsx "$tor" ip link add inet0 type veth peer name eth0 netns "$inet"
nsx "$tor" ip link add gw-1 type veth peer name ext0 netns "$gw_ns"
nsx "$tor" ip addr add 100.64.0.1/24 dev inet0; nsx "$tor" ip addr add 172.31.1.1/24 dev gw-1
nsx "$inet" ip addr add 100.64.0.10/24 dev eth0; nsx "$gw_ns" ip addr add 172.31.1.2/24 dev ext0
for l in inet0 gw-1; do nsx "$tor" ip link set "$l" up; done
nsx "$inet" ip link set eth0 up; nsx "$gw_ns" ip link set ext0 up
nsx "$inet" ip route add default via 100.64.0.1; nsx "$gw_ns" ip route add default via 172.31.1.1
# The internet host's packets must carry complete checksums, as any packet
# off a real wire does: a veth otherwise hands on TCP with only the
# pseudo-header summed (checksum offload), which XDP cannot see and the
# load balancer's backend would then drop.
nsx "$inet" ethtool -K eth0 tx off >/dev/null
nsx "$tor" sysctl -qw net.ipv4.ip_forward=1
# FRR drops to the frr user: its directory must be reachable by it.
frr=$(mktemp -d /tmp/meridian-demo-frr.XXXXXX)
printf 'hostname tor\nzebra work-queue 0\n' >"$frr/zebra.conf"
cat >"$frr/bgpd.conf" <<CONF
hostname tor
router bgp 65000
 bgp router-id 10.255.255.254
 no bgp ebgp-requires-policy
 bgp graceful-restart
 neighbor 172.31.1.2 remote-as 65001
 neighbor 172.31.1.2 timers 1 3
 neighbor 172.31.1.2 passive
CONF
chown -R frr:frr "$frr"
for d in zebra bgpd; do
  nsx "$tor" "/usr/lib/frr/$d" -d -f "$frr/$d.conf" -i "$frr/$d.pid" -z "$frr/zserv.api" \
    --vty_socket "$frr" -P 0 -u frr -g frr >>"$work/frr.log" 2>&1
  [ "$d" = zebra ] && for _ in $(seq 50); do [ -S "$frr/zserv.api" ] && break; sleep 0.05; done
done
vty() { vtysh --vty_socket "$frr" -d bgpd -c "$@"; }
declare -A web_pid
for i in 1 2 3; do
  mkdir -p "$work/www-$i"; echo "hello from web-$i (10.0.1.1$i)" >"$work/www-$i/index.html"
  nsenter --net="/run/netns/me2e-$run_id-web-$i" -- /usr/bin/python3 -m http.server 80 --bind 0.0.0.0 \
    --directory "$work/www-$i" >/dev/null 2>"$work/http-$i.log" &
  pids3+=($!); web_pid[$i]=$!
done
ctl3() { "$bin/meridianctl" --config= --endpoint "unix:$e2e_run/controller.sock" \
  --token "$(sed -n 's/.*"token": "\([0-9a-f]*\)".*/\1/p' "$e2e_run/state.json")" "$@"; }

step "meridianctl apply: a public pool, gw-1's BGP peer (the ToR) and an elastic IP for web-1"
cat >"$work/outside.yaml" <<DOCS
kind: PublicAddressPool
name: publicAddressPools/internet
cidrs: [198.51.100.0/24]
communities: ["65000:100"]
med: 10
---
kind: BgpPeer
name: bgpPeers/gw-1-tor
node: nodes/gw-1
localAsn: 65001
peerAsn: 65000
peerAddress: 172.31.1.1
holdTime: 3
---
kind: ElasticIp
name: projects/demo/elasticIps/web-1
pool: publicAddressPools/internet
address: 198.51.100.10
port: projects/demo/ports/web-1
DOCS
ctl3 apply -f "$work/outside.yaml"
for _ in $(seq 100); do nsx "$tor" ip route show 198.51.100.10 | grep -q bgp && break; sleep 0.1; done

step "the ToR learned the elastic IP by BGP: vtysh 'show bgp ipv4 unicast' and ip route on the ToR"
vty 'show bgp ipv4 unicast' | sed -n '/Network/,$p'
nsx "$tor" ip route show proto bgp

step "the BGP session as the API shows it: meridianctl bgp-peer list"
sleep 1.5 # the agent reports peer states every second
ctl3 bgp-peer list || true

step "internet host (100.64.0.10) -> elastic IP 198.51.100.10: ping and curl"
nsx "$inet" ping -c 3 -i 0.2 -W 2 198.51.100.10 | tail -n 2
nsx "$inet" curl -s --max-time 3 http://198.51.100.10/

step "web-1 saw the internet host's real address (its web server's log)"
tail -n 1 "$work/http-1.log"

step "disassociate: the route is withdrawn from the ToR, the elastic IP stops answering"
ctl3 elastic-ip update projects/demo/elasticIps/web-1 --port "" >/dev/null
for _ in $(seq 100); do nsx "$tor" ip route show 198.51.100.10 | grep -q . || break; sleep 0.1; done
echo "ToR routes from BGP: $(nsx "$tor" ip route show proto bgp | wc -l)"
nsx "$inet" curl -s --max-time 1 http://198.51.100.10/ || echo "curl: no answer (as expected)"

step "part 4: the L4 load balancer. A public VIP over web-1, web-2 (node-1) and web-3 (node-2), HTTP health checks"
cat >"$work/lb.yaml" <<DOCS
kind: LoadBalancer
name: projects/demo/loadBalancers/web
vpc: projects/demo/vpcs/prod
scheme: internet-facing
pool: publicAddressPools/internet
vip: 198.51.100.40
listeners:
- name: http
  protocol: tcp
  port: 80
  healthCheck: {protocol: http, path: /, intervalMs: 500, timeoutMs: 400, healthyThreshold: 2, unhealthyThreshold: 2}
  backends:
  - {port: projects/demo/ports/web-1}
  - {port: projects/demo/ports/web-2}
  - {port: projects/demo/ports/web-3}
DOCS
cat "$work/lb.yaml"
ctl3 apply -f "$work/lb.yaml"
for _ in $(seq 100); do nsx "$tor" ip route show 198.51.100.40 | grep -q bgp && break; sleep 0.1; done
nsx "$tor" ip route show 198.51.100.40
for _ in $(seq 100); do [ "$(ctl3 lb get projects/demo/loadBalancers/web | grep -c ' healthy')" -ge 3 ] && break; sleep 0.1; done

step "meridianctl lb get: the VIP and each backend's health, as the nodes hosting them report it"
ctl3 lb get projects/demo/loadBalancers/web

step "internet host -> VIP 198.51.100.40: 30 new connections (curl), spread by Maglev over the three web servers"
for _ in $(seq 30); do nsx "$inet" curl -s --max-time 2 http://198.51.100.40/ || echo "(no answer)"; done | sort | uniq -c

step "stop web-3's server: its health check fails (2 x 500 ms), it leaves every table"
kill "${web_pid[3]}"; wait "${web_pid[3]}" 2>/dev/null || true
for _ in $(seq 100); do ctl3 lb get projects/demo/loadBalancers/web | grep -q -i unhealthy && break; sleep 0.1; done
ctl3 lb get projects/demo/loadBalancers/web

step "30 new connections again: none goes to web-3"
for _ in $(seq 30); do nsx "$inet" curl -s --max-time 2 http://198.51.100.40/ || echo "(no answer)"; done | sort | uniq -c

step "tear down"
for p in "${pids3[@]}"; do kill "$p" 2>/dev/null || true; done
for f in "$frr"/*.pid; do kill "$(cat "$f")" 2>/dev/null || true; done; sleep 0.2; rm -rf "$frr"; frr=
e2e down --run "$e2e_run"
e2e_run=
for ns in "${netns3[@]}"; do ip netns del "$ns"; done
netns3=(); pids3=()
