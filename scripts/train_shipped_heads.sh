#!/usr/bin/env bash
# Re-train the demo heads shipped in personalize/shipped_heads/ for the embedded base model, exactly as
# they were made. The first command samples the rollouts (cached in $PERSONALIZE_DATA_DIR/rollouts/ and
# shared by the others: same prompts, seed and rollout settings); each head records its command in head.json.
# concise and helpful are LoRA heads on the top 8 layers (helpful: one epoch, to fit the CPU budget).
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/personalize
common=(--samples-per-prompt 2 --max-new-tokens 256 --seed 0)
$P heads train --objective concise --reward concise --out personalize/shipped_heads/concise \
    --kind lora --lora-layers 8 --epochs 2 "${common[@]}" --description "shorter answers that still answer the question"
$P heads train --objective helpful --reward helpful --out personalize/shipped_heads/helpful \
    --kind lora --lora-layers 8 --epochs 1 "${common[@]}" --description "answers that stay on the question's topic, no refusals"
# Not shipped yet (next: faster training on cached lower-layer features):
# $P heads train --objective harmless --reward harmless --out personalize/shipped_heads/harmless \
#     --kind linear --epochs 2 --head-lr 0.002 "${common[@]}" --description "polite, non-toxic answers"
# $P heads train --objective positive --reward positive --out personalize/shipped_heads/positive \
#     --kind linear --epochs 2 --head-lr 0.002 "${common[@]}" --description "a warmer, more positive tone"
