#!/usr/bin/env bash
# Two kind clusters for the seed scenario, rise and bair, each one node with 2 fake T4 GPUs:
#   - Kueue from its release manifests, with the pod integration enabled in its configuration
#   - node capacity nvidia.com/gpu=2 (status patch) and label nvidia.com/gpu.product=Tesla-T4
#   - the namespace, priority classes, RBAC and Kueue queues of docs/manifests/
#   - docker/kind/kubeconfig with the clusters' internal addresses (for docker/compose.yaml)
#     and docker/.env with AIRFLOW_UID (so the containers can read that kubeconfig)
# Needs docker, kind and kubectl (>= 1.24). Safe to run again: existing clusters are reused.
# The GPUs are fake: pods requesting nvidia.com/gpu are scheduled and run, without a GPU.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MANIFESTS="$ROOT/docs/manifests"
CLUSTERS=${CLUSTERS:-"rise bair"}
KUEUE_VERSION=${KUEUE_VERSION:-v0.19.2}
KUEUE_MANIFESTS=${KUEUE_MANIFESTS:-https://github.com/kubernetes-sigs/kueue/releases/download/${KUEUE_VERSION}/manifests.yaml}
# docs/manifests/kueue-queues.yaml gives the owner queue a quota of 2 GPUs: keep them equal.
GPUS=2
PRODUCT=Tesla-T4
KUBECONFIG_OUT=${KUBECONFIG_OUT:-$HERE/kubeconfig}
ENV_FILE="$HERE/../.env"

say() { printf '==> %s\n' "$*"; }
die() { printf 'create-clusters.sh: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is needed (see docs/docker.md)"; }

# retry SECONDS CMD...: run CMD until it succeeds (webhooks warming up), at most SECONDS.
retry() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 2
    done
}

create_cluster() {
    local name=$1
    if kind get clusters 2>/dev/null | grep -qx "$name"; then
        say "kind cluster $name exists: reusing it"
    else
        say "creating kind cluster $name"
        kind create cluster --name "$name" --wait 180s
    fi
}

install_kueue() {
    local ctx=$1
    say "$ctx: Kueue $KUEUE_VERSION"
    kubectl --context "$ctx" apply --server-side --force-conflicts -f "$KUEUE_MANIFESTS"
    kubectl --context "$ctx" -n kueue-system rollout status deployment/kueue-controller-manager \
        --timeout=300s
    enable_pod_integration "$ctx"
}

# Add "pod" to integrations.frameworks of Kueue's configuration (ConfigMap kueue-manager-config,
# key controller_manager_config.yaml), then restart Kueue. The provider submits plain pods.
enable_pod_integration() {
    local ctx=$1 cfg patched tmp
    cfg=$(kubectl --context "$ctx" -n kueue-system get configmap kueue-manager-config \
        -o jsonpath='{.data.controller_manager_config\.yaml}')
    [ -n "$cfg" ] || die "$ctx: ConfigMap kueue-system/kueue-manager-config has no controller_manager_config.yaml"
    if grep -Eq '^[[:space:]]*-[[:space:]]*"?pod"?[[:space:]]*$' <<<"$cfg"; then
        say "$ctx: Kueue pod integration already enabled"
        return
    fi
    # Insert '- "pod"' as the first item of the list under 'frameworks:', same indentation.
    patched=$(awk '
        !done && /^[[:space:]]*frameworks:[[:space:]]*$/ { print; inlist = 1; next }
        inlist && /^[[:space:]]*-/ {
            match($0, /^[[:space:]]*/)
            print substr($0, 1, RLENGTH) "- \"pod\""
            inlist = 0; done = 1
        }
        { print }
        END { if (!done) exit 1 }' <<<"$cfg") \
        || die "$ctx: found no 'frameworks:' list in Kueue's configuration; add \"pod\" to integrations.frameworks by hand"
    tmp=$(mktemp)
    printf '%s\n' "$patched" >"$tmp"
    kubectl --context "$ctx" -n kueue-system create configmap kueue-manager-config \
        --from-file=controller_manager_config.yaml="$tmp" --dry-run=client -o yaml \
        | kubectl --context "$ctx" apply --server-side --force-conflicts \
            --field-manager=skyshare-kind -f -
    rm -f "$tmp"
    say "$ctx: Kueue pod integration enabled; restarting Kueue"
    kubectl --context "$ctx" -n kueue-system rollout restart deployment/kueue-controller-manager
    kubectl --context "$ctx" -n kueue-system rollout status deployment/kueue-controller-manager \
        --timeout=300s
}

fake_gpus() {
    local ctx=$1 node
    for node in $(kubectl --context "$ctx" get nodes -o name); do
        say "$ctx: $node gets $GPUS x nvidia.com/gpu ($PRODUCT)"
        kubectl --context "$ctx" label "$node" --overwrite \
            "nvidia.com/gpu.product=$PRODUCT" "nvidia.com/gpu.count=$GPUS"
        kubectl --context "$ctx" patch "$node" --subresource=status --type=json -p \
            "[{\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$GPUS\"}]"
    done
    # The kubelet copies the new capacity into allocatable on its next status update.
    retry 120 gpus_allocatable "$ctx" || die "$ctx: nodes do not show nvidia.com/gpu allocatable"
}

gpus_allocatable() {
    local got
    got=$(kubectl --context "$1" get nodes -o jsonpath='{.items[*].status.allocatable.nvidia\.com/gpu}')
    [ -n "$got" ] && ! grep -qv "^$GPUS\$" <<<"$(tr ' ' '\n' <<<"$got")"
}

apply_skyshare() {
    local ctx=$1
    say "$ctx: namespace, priority classes, RBAC, Kueue queues (docs/manifests)"
    kubectl --context "$ctx" apply --server-side -f "$MANIFESTS/namespace.yaml" \
        -f "$MANIFESTS/priority-classes.yaml" -f "$MANIFESTS/rbac.yaml"
    # Kueue's webhooks validate these: retry while Kueue restarts.
    retry 180 kubectl --context "$ctx" apply --server-side -f "$MANIFESTS/kueue-queues.yaml" \
        || die "$ctx: Kueue objects could not be applied (is Kueue running?)"
}

write_kubeconfig() {
    local files=() name f
    for name in $CLUSTERS; do
        f=$(mktemp)
        kind get kubeconfig --name "$name" --internal >"$f"
        files+=("$f")
    done
    (umask 077 && KUBECONFIG=$(IFS=:; echo "${files[*]}") kubectl config view --flatten >"$KUBECONFIG_OUT")
    rm -f "${files[@]}"
    say "kubeconfig for the containers: $KUBECONFIG_OUT (contexts: $(for n in $CLUSTERS; do printf 'kind-%s ' "$n"; done))"
    if [ ! -f "$ENV_FILE" ]; then
        echo "AIRFLOW_UID=$(id -u)" >"$ENV_FILE"
        say "wrote $ENV_FILE (AIRFLOW_UID=$(id -u): the containers run as you and can read the kubeconfig)"
    fi
    # One Fernet key and JWT secret for every component (compose.yaml reads them from .env).
    if ! grep -q '^SKYSHARE_FERNET_KEY=' "$ENV_FILE"; then
        echo "SKYSHARE_FERNET_KEY=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')" >>"$ENV_FILE"
        echo "SKYSHARE_JWT_SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '+/=')" >>"$ENV_FILE"
        say "added a Fernet key and a JWT secret to $ENV_FILE"
    fi
}

main() {
    need docker
    need kind
    need kubectl
    local name
    for name in $CLUSTERS; do
        create_cluster "$name"
        install_kueue "kind-$name"
        fake_gpus "kind-$name"
        apply_skyshare "kind-$name"
    done
    write_kubeconfig
    say "done. Next: docker compose -f docker/compose.yaml up -d --build"
}

# Run unless sourced (tests/unit/test_docker_files.py sources it to test enable_pod_integration).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
