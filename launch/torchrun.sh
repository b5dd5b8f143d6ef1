#!/usr/bin/env bash
# torchrun launcher: one node with N processes, or one node of a multi-node job.
# torchrun starts `cptift run CONFIG ...` once per process; every rank runs the
# same command and the pipeline decides what each rank does (docs/multi-node.md).
#
#   # one node, one process per GPU (default: every visible GPU, else 1 process)
#   NPROC_PER_NODE=8 bash launch/torchrun.sh configs/demo.yaml cpt.max_steps=1000
#
#   # two nodes: run on each node with its NODE_RANK; they meet at a c10d rendezvous on node 0
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29500 NPROC_PER_NODE=8 bash launch/torchrun.sh configs/demo.yaml
#   NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=node0:29500 NPROC_PER_NODE=8 bash launch/torchrun.sh configs/demo.yaml
#
#   # or let cptift render and run it:
#   cptift launch configs/demo.yaml --executor torchrun --nodes 1 --gpus-per-node 8
#
# Logs: every rank's stdout/stderr is kept under
# $LOG_DIR/<run id>_*/attempt_0/<local rank>/{stdout,stderr}.log and teed to this terminal.
set -euo pipefail

# ---- settings (environment variables) ----
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [ "${NPROC_PER_NODE:-0}" -gt 0 ] || NPROC_PER_NODE=1
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-127.0.0.1:29500}   # host:port of node 0, reachable from every node
RDZV_ID=${RDZV_ID:-cptift}                         # the same on every node of one job
LOG_DIR=${LOG_DIR:-logs/torchrun/node${NODE_RANK}}
CPTIFT=${CPTIFT:-cptift}                           # the cptift executable (its venv's bin/cptift)

# ---- command ----
if [ "$NNODES" -eq 1 ]; then
  # --standalone: a private rendezvous on a free local port, so two jobs on one node never collide.
  rdzv=(--standalone)
else
  rdzv=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --rdzv-backend c10d
        --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID")
fi
mkdir -p "$LOG_DIR"
set -x
exec torchrun "${rdzv[@]}" --nproc-per-node "$NPROC_PER_NODE" \
  --log-dir "$LOG_DIR" --tee 3 \
  --no-python "$CPTIFT" run "$@"
