"""HF transformers peer: DeepseekV3ForCausalLM built from bench/gpu/configs/moonlight-16b-a3b.json with random
weights, bf16, on the GPU; greedy decode tokens/s at batch 1 with its KV cache (eager default experts path).
Prints one line: 'hf peer decode batch 1: X tokens/s'."""
import json
import time

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

cfg = json.load(open("bench/gpu/configs/moonlight-16b-a3b.json"))
cfg.pop("architectures", None)
config = DeepseekV3Config(**cfg)
torch.manual_seed(0)
with torch.device("cuda"):
    model = DeepseekV3ForCausalLM(config).to(torch.bfloat16).eval()
prompt = torch.randint(0, config.vocab_size, (1, 512), device="cuda")
new = 32
with torch.no_grad():
    model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=1, min_new_tokens=1, do_sample=False)
    torch.cuda.synchronize()
    t_prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=new + 1, min_new_tokens=new + 1, do_sample=False)
    torch.cuda.synchronize()
    t = time.perf_counter() - t0 - t_prefill
print(f"hf peer: transformers DeepseekV3ForCausalLM, Moonlight shape, bf16, context 512, {torch.cuda.get_device_name()}")
print(f"hf peer decode batch 1: {new / t:.2f} tokens/s")
