#!/bin/sh
# xdp-init: the one-shot set-up steps of a compose deployment (compose.yaml services `pki` and
# `tokens`), with the existing commands (`xdp admin pki init/issue`, `xdp admin create-token`).
# Idempotent: whatever already exists is kept. Runs outside Docker too (tests/test_deploy.py).
#
#   xdp-init [--owner UID:GID] pki CA_DIR GATEWAY_DIR NODES_DIR GATEWAY_HOST NODE...
#       The deployment CA in CA_DIR (its key never leaves that directory), the gateway's
#       certificate for GATEWAY_HOST into GATEWAY_DIR/pki (ca.pem, gateway.pem, gateway.key), and
#       for each NODE a certificate bound to it and to its holder principal NODE-holder, with the
#       CA certificate, into NODES_DIR/NODE/pki (ca.pem, node.pem, node.key).
#   xdp-init [--owner UID:GID] tokens NODES_DIR NODE...
#       A holder token for each NODE (principal NODE-holder) into NODES_DIR/NODE/holder.token,
#       in the database XDP_DB names (which the gateway initialised on its first start).
#
# --owner hands the directories written to that user (the images run as 10001:10001).
set -eu
umask 077

usage() {
    sed -n '6,13p' "$0" >&2
    exit 2
}

owner=""
if [ "${1:-}" = "--owner" ]; then
    [ $# -ge 2 ] || usage
    owner=$2
    shift 2
fi
[ $# -ge 1 ] || usage
step=$1
shift

give() {
    if [ -n "$owner" ]; then chown -R "$owner" "$@"; fi
}

case "$step" in
pki)
    [ $# -ge 5 ] || usage
    ca=$1 gateway=$2 nodes=$3 host=$4
    shift 4
    if [ ! -f "$ca/ca.pem" ]; then
        xdp admin pki init "$ca" --host "$host"
    fi
    mkdir -p "$gateway/pki"
    for f in ca.pem gateway.pem gateway.key; do
        [ -f "$gateway/pki/$f" ] || cp "$ca/$f" "$gateway/pki/$f"
    done
    give "$gateway"  # the volume itself too: the gateway writes its log key next to pki/
    for node in "$@"; do
        mkdir -p "$nodes/$node/pki"
        if [ ! -f "$nodes/$node/pki/node.pem" ]; then
            [ -f "$ca/nodes/$node.pem" ] || xdp admin pki issue "$ca" --node "$node" --holder "$node-holder"
            cp "$ca/nodes/$node.pem" "$nodes/$node/pki/node.pem"
            cp "$ca/nodes/$node.key" "$nodes/$node/pki/node.key"
            cp "$ca/ca.pem" "$nodes/$node/pki/ca.pem"
        fi
        give "$nodes/$node"  # the volume itself too: the node keeps its state there
    done
    ;;
tokens)
    [ $# -ge 2 ] || usage
    nodes=$1
    shift
    for node in "$@"; do
        if [ ! -f "$nodes/$node/holder.token" ]; then
            mkdir -p "$nodes/$node"
            xdp admin create-token --role holder --name "$node-holder" --out "$nodes/$node/holder.token"
        fi
        give "$nodes/$node/holder.token"
    done
    ;;
*)
    usage
    ;;
esac
