#!/usr/bin/env bash
# `make demo`: the reference node on loopback, the reconciler against configs/examples;
# then the same tool against the reference Agave validator's admin socket (Geyser plugins).
# Everything happens in a temporary directory that is removed at the end; the script
# stops the nodes and exits 0 by itself.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/slipstream-demo.XXXXXX")
node_pid=""
validator_pid=""
stop() { if [ -n "$1" ]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi; }
cleanup() {
    stop "$node_pid"
    stop "$validator_pid"
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || printf '(exit %s)\n' "$?"; }

# 1. The config directory: the examples, with placeholder plugin libraries.
cp -r "$here/configs/examples" "$work/plugins.d"
rm -f "$work/plugins.d/README.md"
python - "$work/plugins.d" <<'EOF'
import glob, os, sys, json5
for config in glob.glob(os.path.join(sys.argv[1], "*.json*")):
    with open(config) as handle:
        libpath = json5.load(handle)["libpath"]
    library = os.path.join(os.path.dirname(config), libpath)
    os.makedirs(os.path.dirname(library), exist_ok=True)
    with open(library, "wb") as handle:
        handle.write(b"placeholder plugin library for the reference node\n")
EOF

# 2. The node: a fresh random JWT secret, one start-up plugin, a free loopback port.
mkdir -p "$work/node/startup"
printf 'placeholder\n' > "$work/node/startup/libslipstream_indexer.so"
printf '{libpath: "libslipstream_indexer.so", name: "indexer"}\n' > "$work/node/startup/indexer.json5"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
slipstream-reconciler node --rest "127.0.0.1:$port" --data-dir "$work/node" \
    --slipstream-config "$work/node/startup/indexer.json5" 2> "$work/node.log" &
node_pid=$!
for _ in $(seq 100); do
    token_file=$(ls "$work"/node/jwt_secret_*.txt 2>/dev/null || true)
    [ -n "$token_file" ] && break
    sleep 0.05
done
[ -n "$token_file" ] || { echo "the reference node did not start:"; cat "$work/node.log"; exit 1; }

# 3. The reconciler's settings, as systemd's EnvironmentFile= would give them.
export SLIPSTREAM_CONFIG_DIR="$work/plugins.d"
export SLIPSTREAM_NODE_URL="http://127.0.0.1:$port"
export SLIPSTREAM_JWT_TOKEN_FILE="$token_file"
export SLIPSTREAM_STATE_DIR="$work/state"

say "A reference node is listening on $SLIPSTREAM_NODE_URL with one start-up plugin (indexer)."
echo "Settings come from the environment: SLIPSTREAM_CONFIG_DIR=$SLIPSTREAM_CONFIG_DIR"

say "validate: check the config files offline"
run slipstream-reconciler validate

say "plan: what would change (nothing is changed)"
run slipstream-reconciler plan

say "apply: make it so"
run slipstream-reconciler apply

say "status: where every plugin stands"
run slipstream-reconciler status

say "An operator edits a config and deletes another"
sed -i 's/batch_size: 100/batch_size: 500/' "$work/plugins.d/postgres.json5"
rm "$work/plugins.d/staking-rewards.json5"
run slipstream-reconciler plan
run slipstream-reconciler apply

say "A broken edit: the plugin keeps running, the reason names file, line and column"
printf '{\n  libpath: "lib/libslipstream_postgres.so",\n  name: "postgres",\n  batch_size: ,\n}\n' \
    > "$work/plugins.d/postgres.json5"
run slipstream-reconciler apply
run slipstream-reconciler status

# 4. Agave: the same tool, a validator's Geyser plugins over <ledger>/admin.rpc.
stop "$node_pid"; node_pid=""
unset SLIPSTREAM_NODE_URL SLIPSTREAM_JWT_TOKEN_FILE
mkdir -p "$work/ledger" "$work/geyser/boot" "$work/geyser.d/lib"
printf 'placeholder\n' > "$work/geyser/boot/libgeyser_indexer.so"
printf '{libpath: "libgeyser_indexer.so", name: "indexer"}\n' > "$work/geyser/boot/indexer.json5"
slipstream-reconciler node --kind agave --ledger "$work/ledger" \
    --geyser-plugin-config "$work/geyser/boot/indexer.json5" 2> "$work/validator.log" &
validator_pid=$!
for _ in $(seq 100); do [ -S "$work/ledger/admin.rpc" ] && break; sleep 0.05; done
[ -S "$work/ledger/admin.rpc" ] || { echo "the reference validator did not start:"; cat "$work/validator.log"; exit 1; }
# A Postgres exporter with a name, and Yellowstone gRPC: strict JSON, no `name` allowed,
# its name (yellowstone-grpc-geyser-<version>) known only once loaded.
printf 'placeholder\n' > "$work/geyser.d/lib/libgeyser_postgres-1.4.so"
for version in 9.0.0 9.1.0; do
    printf 'placeholder\ngeyser:name=yellowstone-grpc-geyser-%s\ngeyser:strict-json\n' "$version" \
        > "$work/geyser.d/lib/libyellowstone_grpc_geyser-$version.so"
done
printf '{\n  libpath: "lib/libgeyser_postgres-1.4.so",\n  name: "postgres",\n}\n' \
    > "$work/geyser.d/postgres.json5"
printf '{"libpath": "lib/libyellowstone_grpc_geyser-9.0.0.so", "grpc": {"address": "127.0.0.1:10000"}}\n' \
    > "$work/geyser.d/yellowstone.json"
export SLIPSTREAM_NODE_KIND=agave
export SLIPSTREAM_LEDGER="$work/ledger"
export SLIPSTREAM_CONFIG_DIR="$work/geyser.d"
export SLIPSTREAM_STATE_DIR="$work/agave-state"

say "Agave: a reference validator's admin RPC at $SLIPSTREAM_LEDGER/admin.rpc, one start-up plugin"
echo "Settings: SLIPSTREAM_NODE_KIND=agave, SLIPSTREAM_LEDGER (no URL, no token: the socket is 0600)"
run slipstream-reconciler plan
run slipstream-reconciler apply

say "Agave: Yellowstone upgraded, installed under its own path; its name changes with it"
sed -i 's/9[.]0[.]0/9.1.0/' "$work/geyser.d/yellowstone.json"
run slipstream-reconciler plan
run slipstream-reconciler apply
run slipstream-reconciler status

cat <<EOF

== What next
- Point the reconciler at your node: SLIPSTREAM_NODE_URL, SLIPSTREAM_JWT_TOKEN_FILE
  (the node's jwt_secret_<address>.txt) and SLIPSTREAM_CONFIG_DIR (default
  /etc/slipstream/plugins.d). 'slipstream-reconciler plan' first; it changes nothing.
- On a Solana validator: SLIPSTREAM_NODE_KIND=agave and SLIPSTREAM_LEDGER (its --ledger),
  run as the validator's user; docs/agave.md.
- In CI: 'slipstream-reconciler validate' and 'plan --detailed-exitcode' (docs/cli.md).
- Every command, option and exit code: docs/cli.md.

The demo node is stopped, and so is the validator; their temporary directory is removed.
EOF
