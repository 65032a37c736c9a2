#!/usr/bin/env bash
# Regenerates controller/ovn/nbdb, the libovsdb models of OVN's northbound
# database, from the NB schema of the OVN that Debian 12 ships (23.03).
#
# The schema is pinned by version and checksum: the renderer is written and
# tested against exactly these tables and columns, so a different schema must
# be a deliberate change (update the pins, regenerate, review the diff, rerun
# the controller/ovn tests against that OVN), never an accident of whatever
# happens to be installed.
set -euo pipefail

SCHEMA=${1:-/usr/share/ovn/ovn-nb.ovsschema}
WANT_VERSION="7.0.0"
WANT_CKSUM="94023179 33468"
LIBOVSDB_VERSION="v0.8.1"

cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [[ ! -r "$SCHEMA" ]]; then
	echo "ovn-modelgen: $SCHEMA not found: install Debian's ovn-common (apt-get install ovn-central)" >&2
	exit 1
fi
version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$SCHEMA")
cksum=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cksum"])' "$SCHEMA")
if [[ "$version" != "$WANT_VERSION" || "$cksum" != "$WANT_CKSUM" ]]; then
	echo "ovn-modelgen: $SCHEMA is version $version (cksum $cksum), pinned to $WANT_VERSION ($WANT_CKSUM)" >&2
	exit 1
fi

out=controller/ovn/nbdb
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# modelgen runs at the libovsdb version go.mod requires, so the generated
# models always match the library that uses them. (go run pkg@version would
# need the proxy's version listing, which is refused here.)
have=$(go list -m -f '{{.Version}}' github.com/ovn-kubernetes/libovsdb)
if [[ "$have" != "$LIBOVSDB_VERSION" ]]; then
	echo "ovn-modelgen: go.mod requires libovsdb $have, pinned to $LIBOVSDB_VERSION" >&2
	exit 1
fi
go run github.com/ovn-kubernetes/libovsdb/cmd/modelgen -p nbdb -o "$tmp" "$SCHEMA"
find "$out" -maxdepth 1 -name '*.go' ! -name 'doc.go' -delete 2>/dev/null || true
mkdir -p "$out"
cp "$tmp"/*.go "$out"/
gofmt -l "$out" | (! grep .) || { echo "ovn-modelgen: generated code is not gofmt-clean" >&2; exit 1; }
echo "ovn-modelgen: $out generated from $SCHEMA (OVN_Northbound $version)"
