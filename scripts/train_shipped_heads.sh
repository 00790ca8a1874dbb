#!/usr/bin/env bash
# Re-train the demo heads shipped in personalize/shipped_heads/ for the embedded base model, exactly as
# they were made. Rollouts are sampled once per rollout setting (cached in $PERSONALIZE_DATA_DIR/rollouts/ and
# shared by every head trained with the same prompts, seed and settings); each head records its command in
# head.json. All four are LoRA heads on the top 8 layers, two epochs each.
# - concise (version 3): 3840 rollouts (240 prompts x 16, up to 128 tokens, the evaluation's length); made
#   on one NVIDIA H200 (rollouts 70 s, head ~70 s). On 2 CPU cores the rollouts took 21-29 min (measured)
#   and this head should take ~30 min (estimated); CPU and GPU sample the same rollouts (counter-based
#   randomness, float32).
# - helpful (version 5): a stopping head (--steer end: it only decides where the answer ends) on the same
#   3840 rollouts, reward shaped at each sentence end by the reward's prefix score, and the option to end the
#   answer at every sentence end valued (--stop-option). 2 CPU cores: prefix scoring 10 min, stop rewards
#   seconds, head 58 min (32 min on a faster run of the same machine type).
# - positive (version 4): the same 3840 rollouts, reward shaped at every token (2 CPU cores: head 35 min).
# - harmless (version 3): the same 3840 rollouts, reward (word lists x decades of the offensive-language
#   classifier's odds) shaped at every token (2 CPU cores: head 35 min).
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/personalize
many=(--samples-per-prompt 16 --max-new-tokens 128 --rollout-batch 256 --seed 0)
$P heads train --objective concise --reward concise --out personalize/shipped_heads/concise \
    --kind lora --lora-layers 8 --lora-rank 8 --epochs 2 "${many[@]}" --shaping none --version 3 \
    --description "shorter answers that still answer the question"
$P heads train --objective helpful --reward helpful --out personalize/shipped_heads/helpful \
    --kind lora --lora-layers 8 --lora-rank 8 --epochs 2 "${many[@]}" --shaping sentence --version 5 \
    --stop-option --steer end \
    --description "answers that stay on the question's topic, no refusals, and end where they are worth most"
$P heads train --objective positive --reward positive --out personalize/shipped_heads/positive \
    --kind lora --lora-layers 8 --epochs 2 "${many[@]}" --shaping token --version 4 \
    --description "a warmer, more positive tone"
$P heads train --objective harmless --reward harmless --out personalize/shipped_heads/harmless \
    --kind lora --lora-layers 8 --epochs 2 "${many[@]}" --shaping token --version 3 \
    --description "polite, non-toxic answers"
# The implicit head that ivg's token level uses in the README's evaluation (not shipped: it is not an objective
# a user would weigh; `personalize eval` finds it in $PERSONALIZE_DATA_DIR/heads/).
$P heads train --kind implicit --objective concise-sft --reward concise --out "${PERSONALIZE_DATA_DIR:-$HOME/.local/share/personalize}/heads/concise-sft" \
    --lora-layers 8 --lora-targets q_proj,k_proj,v_proj,o_proj --epochs 1 "${many[@]}" \
    --description "the policy fine-tuned on the most concise rollouts (ivg's token level)"
