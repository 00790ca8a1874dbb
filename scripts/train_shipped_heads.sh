#!/usr/bin/env bash
# Re-train the demo heads shipped in personalize/shipped_heads/ for the embedded base model.
# The first command samples the rollouts (cached in $PERSONALIZE_DATA_DIR/rollouts/ and shared
# by the others, since prompts, seed and rollout settings are the same); each head records the
# exact command in its head.json.
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/personalize
declare -A DESCRIPTION=(
    [concise]="shorter answers that still answer the question"
    [helpful]="answers that stay on the question's topic, no refusals"
    [harmless]="polite, non-toxic answers"
    [positive]="a warmer, more positive tone"
)
for objective in ${OBJECTIVES:-concise helpful harmless positive}; do
    $P heads train --objective "$objective" --reward "$objective" --out "personalize/shipped_heads/$objective" \
        --kind lora --lora-layers 8 --epochs "${EPOCHS:-2}" --samples-per-prompt 2 --max-new-tokens 256 \
        --seed 0 --description "${DESCRIPTION[$objective]}"
done
