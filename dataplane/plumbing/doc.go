// Package plumbing creates and converges the kernel devices a node agent
// needs around its eBPF data path: the veth pair of each workload, the VXLAN
// overlay device in external (collect-metadata) mode, and the per-device
// sysctls the programs rely on.
//
// Every Ensure function is level-triggered: it compares what exists with the
// spec, changes only what differs and reports what it changed, so the agent
// can call it on every reconcile and after a restart without disturbing
// traffic that is already right. Functions act in the network namespace of
// the calling thread (the agent runs inside its node's namespace); a
// workload's namespace is named by path and entered only through netlink
// handles or a short-lived locked thread, never by switching the caller.
//
// The package owns links, addresses, routes and sysctls. It must not load or
// attach eBPF programs (dataplane/datapath does), must not decide which
// ports a node should have (the agent's reconcile loop does) and keeps no
// state of its own: the kernel is the only record.
package plumbing
