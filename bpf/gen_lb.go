package bpf

// The north-south load balancer (issue [5]) is an object of its own: it is
// attached to gateway uplinks only and loaded by dataplane/lb.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -no-global-types -type lb_vip_key -type lb_vip -type lb_backend -type lb_flow -type lb_conn -type lb_config -type lb_nexthop -type lb_svc_counters -type lb_counters Lb c/lb.c
