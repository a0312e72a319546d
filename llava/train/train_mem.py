"""Upstream's launcher target: train with flash-attention 2 (falls back to sdpa when flash-attn is unusable)."""
from llava.train.cpu_distributed import end_cpu_rank_process
from llava.train.train import train

if __name__ == "__main__":
    train(attn_implementation="flash_attention_2")
    end_cpu_rank_process()
