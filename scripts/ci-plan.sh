#!/usr/bin/env bash
# Validate a plugin directory and plan it offline, for any CI (docs/ci.md).
#
#   scripts/ci-plan.sh PLUGIN_DIR LIVE_JSON [SUMMARY_FILE]
#
# LIVE_JSON is the node's plugin list as GET /v2/{network}/slipstream/plugins returns it
# ("[]" for a new node). The plugin libraries need not be checked out. The plan text is
# printed and appended to SUMMARY_FILE (e.g. $GITHUB_STEP_SUMMARY) in a code block.
# Exit: 0 no changes, 2 changes to review (not a failure), 1 an invalid file or an error.
set -uo pipefail
dir=${1:?plugin directory}
live=${2:?live list (JSON array of plugin names)}
summary=${3:-/dev/null}
state=$(mktemp -d)
out=$(mktemp)
trap 'rm -rf "$state" "$out"' EXIT

slipstream-reconciler validate --config-dir "$dir" --no-library-check || exit 1
slipstream-reconciler plan --config-dir "$dir" --live-from "$live" --state-dir "$state" \
    --no-library-check --detailed-exitcode >"$out"
code=$?
cat "$out"
{
    echo "### Slipstream plan for \`$dir\`"
    echo '```'
    cat "$out"
    echo '```'
} >>"$summary"
exit "$code"
