#!/usr/bin/env bash
# Run HERE (with PyPI access) before scripts/gpu_check.sh: downloads into .whl/ the wheels that the lent
# GPU machine lacks (Python 3.12, no network there).  Then call the device tool with carry=[".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl gymnasium farama-notifications stable-baselines3 sb3-contrib cloudpickle
ls -la .whl
