"""Reference-style VAS, the baseline the engine is measured against.

As in the original VAS code, the value model is a scalar ``V(s)`` (a LoRA copy
of the backbone plus a linear value head on the last hidden state), so scoring
the top-k candidates of each step costs one extra value-model forward per
candidate: the value model's prefix cache is expanded to k rows, each row gets
one candidate token, and the chosen row's cache is kept. To be generous to the
baseline the LoRA is merged into the value model's weights and its cache is
reused across steps (no prefix recomputation).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from personalize.heads import ValueHead
from personalize.lora import PEFT_PREFIX
from personalize.models import BaseModel


def merged_value_model(base: BaseModel, head: ValueHead) -> nn.Module:
    """A copy of the backbone with the head's LoRA merged into its weights."""
    model = copy.deepcopy(base.model.get_decoder())
    assert head.adapter is not None and head.meta.lora is not None
    scaling = head.meta.lora.scaling
    prefix = PEFT_PREFIX + "model."
    with torch.no_grad():
        for key, a in head.adapter.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module_name = key[len(prefix) : -len(".lora_A.weight")]
            b = head.adapter[key.replace("lora_A", "lora_B")]
            linear = model.get_submodule(module_name)
            linear = getattr(linear, "base", linear)
            linear.weight += (b @ a * scaling).to(linear.weight.dtype)
    return model


@dataclass
class ReferenceVAS:
    """Reference-style VAS with one scalar value model per objective."""

    base: BaseModel
    value_models: list[nn.Module]
    value_outs: list[nn.Linear]  # (H -> 1) each
    top_k: int = 20
    beta: float = 1.0

    def step_times(self, prompt_ids: list[int], new_tokens: int, seed: int = 0) -> list[float]:
        """Generate ``new_tokens`` tokens; return the wall time of each decode step (s)."""
        gen = torch.Generator().manual_seed(seed)
        decoder = self.base.model.get_decoder()
        lm_head = self.base.model.get_output_embeddings()
        ids = torch.tensor([prompt_ids], device=self.base.device)
        times: list[float] = []
        with torch.inference_mode():
            base_cache = DynamicCache()
            value_caches = [DynamicCache() for _ in self.value_models]
            hidden = decoder(input_ids=ids, past_key_values=base_cache, use_cache=True).last_hidden_state[:, -1]
            for model, cache in zip(self.value_models, value_caches, strict=True):
                model(input_ids=ids, past_key_values=cache, use_cache=True)
            for _ in range(new_tokens):
                start = time.perf_counter()
                logits = lm_head(hidden).float()  # (1, V)
                top = logits.topk(self.top_k, dim=-1).indices  # (1, C)
                scores = logits.clone()
                expanded = []
                for model, out, cache in zip(self.value_models, self.value_outs, value_caches, strict=True):
                    candidates = copy.deepcopy(cache)
                    candidates.batch_repeat_interleave(self.top_k)  # C copies of the prefix
                    cand_hidden = model(input_ids=top.T, past_key_values=candidates, use_cache=True).last_hidden_state[
                        :, -1
                    ]  # (C, H)
                    values = out(cand_hidden).float().squeeze(-1)  # (C,)
                    scores[0, top[0]] += self.beta * (values - values.mean())
                    expanded.append(candidates)
                token = torch.multinomial(torch.softmax(scores, -1), 1, generator=gen)  # (1, 1)
                hits = (top[0] == token[0, 0]).nonzero()
                for i, (model, candidates) in enumerate(zip(self.value_models, expanded, strict=True)):
                    if len(hits):
                        candidates.batch_select_indices(hits[0])
                        value_caches[i] = candidates
                    else:
                        model(input_ids=token, past_key_values=value_caches[i], use_cache=True)
                hidden = decoder(input_ids=token, past_key_values=base_cache, use_cache=True).last_hidden_state[:, -1]
                if self.base.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        return times
