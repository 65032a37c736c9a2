#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, only when one is
# missing, so a warm machine pays nothing.
set -euo pipefail
pkgs=(iproute2 iputils-ping tcpdump tshark iperf3 netsniff-ng wrk nftables netcat-openbsd curl ethtool ovn-central ovn-host openvswitch-switch frr)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # tshark asks whether non-root users may capture; answer before installing.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$(id -u)" = 0 ] || { echo "the tests need root (eBPF, network namespaces)" >&2; exit 1; }
[ -e /sys/kernel/btf/vmlinux ] || { echo "the kernel lacks BTF (/sys/kernel/btf/vmlinux)" >&2; exit 1; }
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
