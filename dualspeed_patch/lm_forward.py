"""Forward prepared embeddings through the language model the fork builds on, not through the fork's forward.

The slow step's teacher reads a sequence the merge already built (`inputs_embeds`, no images). Our `llava/` and
upstream LLaVA 1.2 pass such a call straight to the LLM, but a fork whose `forward` re-runs its multimodal merge
on every call (LLaVA 1.1 style) returns no embeddings when there are no images, and the LLM then refuses the call
(`You have to specify either ... input_ids or inputs_embeds`). The transformers causal-LM class the fork's model
derives from (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, ...) knows nothing of images, so its
forward takes the embeddings as they are. It is installed on the instance for one call, so the module's own
`__call__` (hooks: DeepSpeed ZeRO-3 gathering, DDP) still runs."""
from __future__ import annotations

import contextlib
import types

from torch import nn


def llava_model(model):
    """The fork's LLaVA model under DeepSpeed/DDP (`.module`) and PEFT (`get_base_model()`) wrappers."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def causal_lm_class(model) -> type:
    """The first class of the model's MRO that transformers defines and that has its own forward."""
    inner = llava_model(model)
    for cls in type(inner).__mro__:
        if cls.__module__.startswith("transformers.") and "forward" in vars(cls):
            return cls
    raise TypeError(f"{type(inner).__name__} derives from no transformers class with a forward; DualSpeed's "
                    "slow step needs the causal LM it builds on (e.g. LlamaForCausalLM) to run the teacher")


@contextlib.contextmanager
def plain_language_model(model):
    """Inside: calling `model(...)` (or any wrapper of it) runs the transformers LM's forward."""
    inner = llava_model(model)
    lm_forward = causal_lm_class(inner).forward
    previous = vars(inner).get("forward")
    inner.forward = types.MethodType(lm_forward, inner)
    try:
        yield inner
    finally:
        if previous is None:
            del inner.forward
        else:
            inner.forward = previous
