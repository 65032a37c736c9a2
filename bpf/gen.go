package bpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -no-global-types -type port_info -type port_ip_key -type subnet_info -type route_key -type route_entry -type ct_key -type ct_entry -type ipcache_slot -type ipcache_range -type sg_key -type sg_value -type sg_port_key -type acl_key -type acl_meta -type acl_interval_key -type acl_proto_key -type acl_bitmap -type acl_rule_key -type acl_rule -type node_config -type drop_key -type drop_event Meridian c/meridian.c
