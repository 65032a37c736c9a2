package bpf

// Batched flow-counter reads for flow logs (issue [6]): a syscall program
// of its own, loaded by dataplane/datapath with the data path's conntrack.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -no-global-types -type ct_key -type fq_slot -type fq_args Flowquery c/flowquery.c
