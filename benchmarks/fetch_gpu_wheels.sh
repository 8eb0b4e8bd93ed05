#!/bin/sh
# The optional packages the GPU check uses that the H200 machine does not have (torchao), as
# wheels for its Python 3.12, into .whl/ (ignored by git; carried to the device). See the device
# notes in benchmarks/gpu_check.py.
set -e
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl torchao==0.18.0
ls -l .whl
