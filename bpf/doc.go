// Package bpf owns the C source of Meridian's eBPF VPC data path (c/) and
// its bpf2go output: the compiled object and the Go twins of the map layouts
// (meridian_bpfel.go/.o), committed so that `go build` needs no clang.
// Regenerate with `go generate ./bpf` (clang 14+, libbpf headers).
//
// c/maps.h is the one place the C side defines map layouts; the generated
// Meridian* types are the Go side. Loading, pinning, attaching and writing
// the maps belong to dataplane/datapath, the rules and their compilation to
// fw: this package holds no logic.
package bpf
