#!/usr/bin/env bash
# Seed 002's curl examples, with the request bodies exactly as the seed's README gives them, run
# against a nodemedic actions API. Each must answer 200 with an `id` and no `error`.
#
#   NODEMEDIC_API  base URL of the API (default http://localhost:8080, the seed's port-forward)
#   KUBECTL        kubectl command line for the cluster (default kubectl)
#   NODE           the node labelled into `test-pool` (default: the first node, as the seed does)
#
# The cluster needs what the seed's walkthrough sets up: a node in `test-pool` and the JobSet
# `example-jobset`; the API reference examples use the pool `my-node-pool` (complete for its TPU
# topology, since they ask for the expected-node-counts preflight) and the JobSet `my-jobset`.
set -euo pipefail
API="${NODEMEDIC_API:-http://localhost:8080}"
KUBECTL="${KUBECTL:-kubectl}"
NODE="${NODE:-$($KUBECTL get nodes -o jsonpath='{.items[0].metadata.name}')}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
failed=0

# POSTs one example body the way the seed's curl does and checks the answer.
example() {
  local name="$1" body="$2" code
  code=$(curl -sS -o "$out" -w '%{http_code}' -X POST "$API/actions" \
    -H 'Content-Type: application/json' \
    -d "$body")
  if [[ "$code" == 200 ]] && grep -q '"id"' "$out" && ! grep -q '"error"' "$out"; then
    echo "ok   $name: $(cat "$out")"
  else
    echo "FAIL $name: HTTP $code $(cat "$out")"
    failed=1
  fi
}

# "Test the API"
example "cordon test-pool and restart example-jobset" '{
    "requestor": "test-user",
    "type": "cordon_nodepool_and_restart_jobset",
    "jobset_name": "example-jobset",
    "node_pool": "test-pool",
    "preflight_checks": {
      "expected_node_counts": false
    },
    "reason": "High error rate detected in node pool"
  }'

# "Verify the node was cordoned" — should output: true
unschedulable=$($KUBECTL get node "$NODE" -o jsonpath='{.spec.unschedulable}')
if [[ "$unschedulable" == true ]]; then echo "ok   $NODE cordoned"; else echo "FAIL $NODE not cordoned ($unschedulable)"; failed=1; fi

# "Uncordon the Node to reset"
$KUBECTL uncordon "$NODE" >/dev/null

# "Supported Actions" 1. Cordon Node Pool
example "1. cordon_nodepool" '{
    "requestor": "user@example.com",
    "type": "cordon_nodepool",
    "node_pool": "my-node-pool",
    "reason": "Node pool showing degraded performance",
    "preflight_checks": {
      "expected_node_counts": true
    }
  }'

# 2. Cordon Node Pool and Restart JobSet
example "2. cordon_nodepool_and_restart_jobset" '{
    "requestor": "user@example.com",
    "type": "cordon_nodepool_and_restart_jobset",
    "jobset_name": "my-jobset",
    "node_pool": "my-node-pool",
    "reason": "Node pool showing degraded performance",
    "preflight_checks": {
      "expected_node_counts": true
    }
  }'

# 3. Cordon and Repair Node Pool
example "3. cordon_and_repair_nodepool" '{
    "requestor": "user@example.com",
    "type": "cordon_and_repair_nodepool",
    "node_pool": "my-node-pool",
    "reason": "Node pool showing degraded performance",
    "preflight_checks": {
      "expected_node_counts": true
    }
  }'

# 4. Repair Node Pool
example "4. repair_nodepool" '{
    "requestor": "user@example.com",
    "type": "repair_nodepool",
    "node_pool": "my-node-pool",
    "reason": "Node pool showing degraded performance",
    "preflight_checks": {
      "expected_node_counts": true
    }
  }'

exit "$failed"
