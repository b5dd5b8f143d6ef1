#!/usr/bin/env bash
# DeepSpeed launcher with a hostfile ("<host> slots=<processes>" per line).
#
#   # from the first node, reaching the others over passwordless ssh (pdsh):
#   HOSTFILE=hostfile MASTER_ADDR=node0 bash launch/deepspeed.sh configs/demo.yaml
#
#   # clusters without passwordless ssh: run on every node with its NODE_RANK (--no_ssh form)
#   NO_SSH=1 NODE_RANK=0 HOSTFILE=hostfile MASTER_ADDR=node0 bash launch/deepspeed.sh configs/demo.yaml
#   NO_SSH=1 NODE_RANK=1 HOSTFILE=hostfile MASTER_ADDR=node0 bash launch/deepspeed.sh configs/demo.yaml
#
#   cptift launch configs/demo.yaml --executor deepspeed --nodes 1 --gpus-per-node 8   # renders + runs it
#
# Logs: every rank's output is kept in $LOG_DIR (--enable_each_rank_log) and shown here.
set -euo pipefail

# ---- settings (environment variables) ----
HOSTFILE=${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile, e.g. a line "node0 slots=8" per node}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}   # address of the first host in the hostfile
MASTER_PORT=${MASTER_PORT:-29500}
LOG_DIR=${LOG_DIR:-logs/deepspeed}
CPTIFT=${CPTIFT:-cptift}

# ---- command ----
per_node=()
if [ -n "${NO_SSH:-}" ]; then
  per_node=(--no_ssh --node_rank "${NODE_RANK:?set NODE_RANK with NO_SSH}")
fi
mkdir -p "$LOG_DIR"
set -x
# --no_local_rank: ranks read LOCAL_RANK from the environment, not a --local_rank argument.
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  "${per_node[@]}" --enable_each_rank_log "$LOG_DIR" \
  --no_python --no_local_rank "$CPTIFT" run "$@"
