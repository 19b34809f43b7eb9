#!/usr/bin/env bash
# Lossless check through the command-line contract: for every method and k, the output ids of
# scripts/generate.py must equal those of --method target on the same prompts (fp32, CPU).
#
#   bash scripts/check_equality.sh PROMPTS.json [MAX_NEW_TOKENS] [K_LIST] [EXTRA generate.py ARGS...]
#   bash scripts/check_equality.sh sample_prompts/demo_prompts.json 64 "1 2 4 8"
#
# self_draft uses 24 of the default model's 30 layers; draft_model drafts with the target itself.
# Prints one line per (method, k) and exits 1 on the first mismatch it reports.
set -euo pipefail
cd "$(dirname "$0")/.."
prompts=${1:?usage: check_equality.sh PROMPTS.json [MAX_NEW_TOKENS] [K_LIST] [ARGS...]}
n=${2:-64}
ks=${3:-1 2 4 8}
shift $(( $# < 3 ? $# : 3 ))
py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() { "$py" scripts/generate.py --input_prompts "$prompts" --max_generated_tokens "$n" "$@" 2>"$work/err" \
          || { cat "$work/err" >&2; exit 2; }; }
run --method target --output "$work/target.json" "$@"
status=0
for method in prompt_lookup self_draft draft_model multi_projection eagle; do
  extra=()
  [ "$method" = self_draft ] && extra=(--draft_layers 24)
  for k in $ks; do
    out="$work/$method-$k.json"
    run --method "$method" --n_draft_tokens "$k" --output "$out" "${extra[@]}" "$@"
    "$py" - "$work/target.json" "$out" "$method" "$k" <<'PY' || status=1
import json, sys
ref, got = (json.load(open(p)) for p in sys.argv[1:3])
bad = [a["index"] for a, b in zip(ref["prompts"], got["prompts"], strict=True) if a["output_ids"] != b["output_ids"]]
s = got["stats"]
print(f"{sys.argv[3]:>16} k={sys.argv[4]}: {len(ref['prompts']) - len(bad)}/{len(ref['prompts'])} prompts equal "
      f"to target-only; acceptance {s['acceptance_rate']:.3f}, mean accepted {s['mean_accepted_tokens']:.2f}")
sys.exit(1 if bad else 0)
PY
  done
done
exit $status
