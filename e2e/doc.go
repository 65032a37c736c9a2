// Package e2e builds Meridian test topologies out of network namespaces on
// one host and runs traffic through them.
//
// A Topology names nodes, workloads and the controller-side intent (the
// documents meridianctl apply takes). Up turns it into a Run: a "fabric"
// namespace holding a bridge, one namespace per node wired to that bridge
// with an underlay address from a random 10.2xx.y.0/24, one controller
// process in the root namespace on a unix socket, one agent process inside
// each node's namespace, and one namespace per workload attached through its
// node agent's local API. Probes (ICMP, TCP, UDP) open their sockets inside
// the namespaces from this process, so no helper binaries are needed, and
// CheckReachability runs a whole allow/deny matrix at once.
//
// Every name a run creates carries its run ID, and every namespace, process,
// bpffs pin and file is recorded in a state file in the run directory as it
// is created, so Close (or `meridian-e2e down` from another process) removes
// exactly what this run made, on every exit path.
//
// The package owns the harness only. It must not reach into the controller
// or the agent other than through their public interfaces (binaries, gRPC,
// meridianctl), must not touch namespaces, links or processes it did not
// create, and must not use addresses outside the namespaces it created.
package e2e
