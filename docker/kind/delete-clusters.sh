#!/usr/bin/env bash
# Delete the kind clusters of create-clusters.sh and the kubeconfig it wrote.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CLUSTERS=${CLUSTERS:-"rise bair"}
for name in $CLUSTERS; do
    kind delete cluster --name "$name"
done
rm -f "${KUBECONFIG_OUT:-$HERE/kubeconfig}"
