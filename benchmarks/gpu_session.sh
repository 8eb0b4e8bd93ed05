#!/bin/sh
# Every GPU step in one command, for a lent GPU machine (15 device-minutes a session, 10 a
# command, a minute or two of them to start): the checks in the order of what they settle, each
# under its own time limit, each writing its results as it goes, so a limit reached keeps
# everything finished before it.
#
#   here:  sh benchmarks/fetch_gpu_wheels.sh          (once: torchao, transformers, peft: .whl/)
#   there: sh benchmarks/gpu_session.sh "$OUT"        (run tool: carry [".whl"], timeout_s 590)
#
# 1. gpu_check.py --estimate: reconciliation with the allocator, NVML, overhead, the CUDA memory
#    snapshot (memory_viz), and estimate vs measured (the accuracy table).
# 2. gpu_faults.py: out of memory in load, forward, generate and backward; NVML per process.
# 3. memlens guide on the same 1.1B model: first the techniques only CUDA runs (int4, fp8
#    matmuls, 2:4 sparsity, the offloaded KV cache; compile stays in the whole guide, its
#    compile time would eat this step) in bfloat16, which they need; then the whole guide
#    (float32 baseline, as the demo's) with the time left (kept partial if cut).
# Only a few files come back from a lent machine (8), so the steps work in a scratch folder and
# OUT gets the JSON each one wrote (gpu_table.py and `memlens show` render them) and the log.
# Budgets in seconds: CHECK=190 FAULTS=90 CUDA_GUIDE=120 GUIDE=140 (about 560 in all).
# A dry run on a CPU with tiny sizes: DRY=1 sh benchmarks/gpu_session.sh OUT
set -u
out=${1:?usage: gpu_session.sh OUT_DIR}
cd "$(dirname "$0")/.."
work=${WORK:-/tmp/memlens-gpu-session}
rm -rf "$work" && mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
if [ -n "${DRY:-}" ]; then device=cpu tiny=--tiny seq=64; else device=cuda tiny= seq=2048; fi
start=$(date +%s)
stamp() { echo "== $(( $(date +%s) - start )) s: $*" | tee -a "$out/session.log"; }
keep() { [ -f "$work/$1" ] && cp "$work/$1" "$out/$2"; }

carried() {  # install these wheels into /tmp/site, ahead of the machine's own packages
    rm -rf /tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$@" && export PYTHONPATH=/tmp/site
}
if ls .whl/*.whl >/dev/null 2>&1; then
    carried .whl/*.whl
    if ! python3 -c "import torchao, transformers, peft" >>"$out/session.log" 2>&1; then
        stamp "the carried wheels do not import together here: only torchao is kept"
        unset PYTHONPATH
        carried .whl/torchao-*.whl
    fi
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', \
transformers.__version__)" 2>&1 | tee -a "$out/session.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | tee -a "$out/session.log" || true

stamp "gpu_check --estimate"
timeout -k 10 "${CHECK:-190}" python3 benchmarks/gpu_check.py --estimate $tiny --device $device \
    --out "$work/check" \
    >>"$out/session.log" 2>&1
stamp "gpu_check exit $?"
keep check/gpu_check.json gpu_check.json

stamp "gpu_faults"
timeout -k 10 "${FAULTS:-90}" python3 benchmarks/gpu_faults.py --device $device \
    --out "$work/faults" \
    >>"$out/session.log" 2>&1
stamp "gpu_faults exit $?"
keep faults/gpu_faults.json gpu_faults.json

model="$work/check/model/config.json"
[ -f "$model" ] || { stamp "no model config from gpu_check: guides skipped"; exit 1; }
guide() {
    # SIGINT at the limit: the guide cancels its current run and keeps what finished.
    limit=$1; dtype=$2; shift 2
    timeout -k 15 -s INT "$limit" python3 -m engine.cli --store "$work/runs" guide \
        --model "$model" --device $device --dtype $dtype --seq $seq --new-tokens 32 \
        --repeats 3 "$@" >>"$out/session.log" 2>&1
}
# In bfloat16: int4 (tinygemm), 2:4 sparsity and fp8 activations take 16-bit weights only.
stamp "guide: the techniques only CUDA runs"
guide "${CUDA_GUIDE:-120}" bfloat16 --out "$work/guide-cuda" \
    --techniques torchao-int4,torchao-fp8,sparsity-24,kv-cache
stamp "guide (CUDA techniques) exit $?"
keep guide-cuda/guide.json guide_cuda.json

stamp "guide: every technique"
guide "${GUIDE:-140}" float32 --out "$work/guide"
stamp "guide exit $?"
keep guide/guide.json guide.json
ls -l "$out"
