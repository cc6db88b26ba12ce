#!/usr/bin/env bash
# Regenerate the reference captures of this directory with the lab (needs root).
#
#   sudo captures/regenerate.sh
#
# The incident's captures go here (one pcapng per capture point); the
# recordings used by the replay tests go to fix-snat/ (a healthy TCP connection)
# and udp-asymmetric/ (UDP answered from the NAT gateway's address). Files are
# replaced only once every run has succeeded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
diag=${DIAG:-"$here/../.venv/bin/diag"}
[ -x "$diag" ] || diag=diag
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$diag" run-scenario incident --out "$work/incident"
"$diag" run-scenario fix-snat --out "$work/fix-snat"
"$diag" run-scenario udp-asymmetric --out "$work/udp-asymmetric"

# pod-a carries nothing of the flow: only the points the connection crosses are kept.
for point in client internet nlb vpc-router node-a node-b pod-b natgw; do
    cp "$work/incident/$point.pcapng" "$here/$point.pcapng"
done
mkdir -p "$here/fix-snat"
cp "$work/fix-snat/client.pcapng" "$here/fix-snat/client.pcapng"
mkdir -p "$here/udp-asymmetric"
cp "$work/udp-asymmetric/client.pcapng" "$here/udp-asymmetric/client.pcapng"
echo "reference captures regenerated in $here" >&2
