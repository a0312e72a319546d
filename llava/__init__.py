from .model import LlavaLlamaForCausalLM

__all__ = ["LlavaLlamaForCausalLM"]
