#!/usr/bin/env bash
# Validate a plugin directory and plan it offline, for any CI (docs/ci.md).
#
#   scripts/ci-plan.sh PLUGIN_DIR LIVE_JSON [SUMMARY_FILE]
#
# LIVE_JSON is the node's plugin list as GET /v2/{network}/slipstream/plugins returns it
# ("[]" for a new node). The plugin libraries need not be checked out. The plan text is
# printed and appended to SUMMARY_FILE (e.g. $GITHUB_STEP_SUMMARY) in a fenced code block
# that no text in the plan can close.
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
# The summary is one fenced block: the directory's name and the plan, both the operator's
# text. The fence is longer than any run of backticks in that text, so nothing in it can
# end the block early.
body=$(mktemp)
trap 'rm -rf "$state" "$out" "$body"' EXIT
{ printf 'config directory: %s\n\n' "$dir"; sed '$a\' "$out"; } >"$body"
fence='```'
while grep -qF -- "$fence" "$body"; do fence="$fence\`"; done
{
    echo "### Slipstream plan"
    echo "$fence"
    cat "$body"
    echo "$fence"
} >>"$summary"
exit "$code"
