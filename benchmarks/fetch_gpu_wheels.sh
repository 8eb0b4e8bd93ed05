#!/bin/sh
# Wheels for the H200 machine (Python 3.12, no network there) into .whl/ (ignored by git;
# carried to the device, where benchmarks/gpu_session.sh installs them into /tmp/site):
# - torchao, which it does not have (int8/fp8/int4 weights, 8-bit AdamW);
# - transformers and peft (it has transformers 5.17, whose QuantizedCache has no fp8 backend):
#   transformers 5.24, the last before it required the `kernels` package (CI tests 5.25,
#   whose kernel-function modules engine/memtracker.py's distinct_outside_names handles). Their other requirements are there already
#   (huggingface_hub 1.33, tokenizers 0.23.2, safetensors 0.8.0: ../.library/device/KINDS.md);
#   should they not import together there, gpu_session.sh keeps only torchao.
set -e
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl torchao==0.18.0 \
    transformers==5.24.0 peft==0.21.2
ls -l .whl
