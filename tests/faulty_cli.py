"""The ``sift-ttft`` CLI with one extra model type, ``faulty-llama``: a tiny Llama whose training forward
raises after ``fail_after_steps`` steps, i.e. a model that loads, measures and starts fine-tuning, then fails.

Run as ``python tests/faulty_cli.py COMMAND ...`` (the same CLI as ``sift-ttft``; only the model type is
registered first, in the process that runs the flow). ``save_faulty_model(llama_dir, out)`` writes such a
model folder from a saved Llama (the weights and tokenizer are the same).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


class FaultyLlamaConfig(LlamaConfig):
    model_type = "faulty-llama"

    def __init__(self, fail_after_steps: int = 1, **kwargs):
        self.fail_after_steps = fail_after_steps
        super().__init__(**kwargs)


class FaultyLlamaForCausalLM(LlamaForCausalLM):
    config_class = FaultyLlamaConfig

    def forward(self, *args, labels=None, **kwargs):
        if labels is not None and torch.is_grad_enabled():  # a training step (scoring runs without grad)
            self._steps = getattr(self, "_steps", 0) + 1
            if self._steps > self.config.fail_after_steps:
                raise RuntimeError(f"faulty-llama: the forward pass of training step {self._steps} failed")
        return super().forward(*args, labels=labels, **kwargs)


AutoConfig.register(FaultyLlamaConfig.model_type, FaultyLlamaConfig)
AutoModelForCausalLM.register(FaultyLlamaConfig, FaultyLlamaForCausalLM)


def save_faulty_model(llama_dir: Path, out: Path, fail_after_steps: int = 1) -> Path:
    """``out``: the Llama of ``llama_dir`` (weights, tokenizer) as a ``faulty-llama``."""
    model = LlamaForCausalLM.from_pretrained(llama_dir)
    config = FaultyLlamaConfig(fail_after_steps=fail_after_steps, **model.config.to_dict())
    faulty = FaultyLlamaForCausalLM(config)
    faulty.load_state_dict(model.state_dict())
    faulty.save_pretrained(out)
    for path in Path(llama_dir).iterdir():
        if "token" in path.name or path.name == "special_tokens_map.json":
            shutil.copy(path, out / path.name)
    return out


if __name__ == "__main__":
    from flows.cli import main

    sys.argv[0] = "sift-ttft"
    sys.exit(main())
