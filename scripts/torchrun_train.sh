#!/usr/bin/env bash
# Train with torchrun (Lightning detects TorchElasticEnvironment): run this once on every node.
#   one node, every GPU:   RUN_DIR=runs/big scripts/torchrun_train.sh experiments/default.yaml [key=value ...]
#   two nodes x 8 GPUs:    NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0:29500 RUN_DIR=runs/big \
#                          scripts/torchrun_train.sh experiments/default.yaml   (the same line on both nodes)
# Ranks started apart cannot agree on runs/<name>-N, so every rank gets the same explicit run_dir.
set -euo pipefail

PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if [ "$NPROC_PER_NODE" -lt 1 ]; then
    echo "torchrun_train.sh: no GPU found; set NPROC_PER_NODE (and trainer.accelerator=cpu for a CPU run)" >&2
    exit 2
fi
if [ "$NNODES" -gt 1 ]; then
    : "${RUN_DIR:?set RUN_DIR to the same folder on every node (a shared file system)}"
    : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=HOST:PORT of the first node}"
    RDZV=(--rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-lit_compclip}")
else
    RUN_DIR=${RUN_DIR:-runs/torchrun-$(date +%Y%m%d-%H%M%S)}
    RDZV=(--standalone)
fi

# One node: build the synthetic world before the ranks start (a no-op when it exists or the data is elsewhere).
# Several nodes: build it beforehand on the shared file system (compclip synth EXP.yaml); ranks refuse to build it.
if [ "$NNODES" = 1 ]; then
    "$PYTHON" -c 'import sys
from lit_compclip.config import split_args
from lit_compclip.config import ConfigError, load_config
from lit_compclip.config.plugins import prepare
try:
    prepare(load_config(*split_args(sys.argv[1:])))
except ConfigError as e:
    sys.exit(f"compclip: error: {e}")' "$@"
fi

exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" "${RDZV[@]}" \
    -m lit_compclip.cli train "$@" trainer.num_nodes="$NNODES" trainer.devices="$NPROC_PER_NODE" run_dir="$RUN_DIR"
