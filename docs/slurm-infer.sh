#!/bin/bash
# Encrypted batch inference as a Slurm job array: task i of n runs shard i/n of the batch.
# Submit from a directory on shared storage holding server.key, batch.vmb and the model file the
# client quantized (model.vmm, from `veilmoe quantize`; without it the embedded demo model runs):
#
#   sbatch --array=0-7 docs/slurm-infer.sh          # 8 shards
#   # when all tasks are done:
#   veilmoe merge --out results.vmb results-*.vmb
#
# A task that is preempted or killed continues where it stopped when resubmitted: --resume picks
# up results-i.vmb.partial (records are checkpointed one by one, never lost or duplicated).
#SBATCH --job-name=veilmoe-infer
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=veilmoe-infer-%A_%a.log
set -euo pipefail
n=${SLURM_ARRAY_TASK_COUNT:?run as a job array (sbatch --array=0-N)}
i=${SLURM_ARRAY_TASK_ID:?}
resume=()
if [ -e "results-$i.vmb.partial" ]; then resume=(--resume); fi
model=()
if [ -e model.vmm ]; then model=(--model model.vmm); fi
exec veilmoe infer \
    --server-key server.key \
    --input batch.vmb \
    --out "results-$i.vmb" \
    --shard "$i/$n" \
    --threads "${SLURM_CPUS_PER_TASK:-16}" \
    "${model[@]}" \
    "${resume[@]}"
