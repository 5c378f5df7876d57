"""Exact reset of a model after each prompt: double-buffered weights restored by pointer swaps."""

from __future__ import annotations

import torch



class _Slot:
    """One parameter's double buffer: ``base`` (the snapshot's weights, never written), and ``work``
    plus Adam's two moment tensors (allocated on first use, then reused by every prompt)."""

    __slots__ = ("name", "param", "base", "checksum", "work", "exp_avg", "exp_avg_sq")

    def __init__(self, name: str, param: torch.nn.Parameter):
        self.name = name
        self.param = param
        self.base = param.data  # a reference to the same storage, not a copy
        self.checksum = _checksum(self.base)
        self.work: torch.Tensor | None = None
        self.exp_avg: torch.Tensor | None = None
        self.exp_avg_sq: torch.Tensor | None = None

    def holds_base(self) -> bool:
        p, b = self.param, self.base
        return (p.data_ptr() == b.data_ptr() and p.shape == b.shape and p.stride() == b.stride()
                and p.dtype == b.dtype and p.device == b.device)

    def work_buffer(self) -> torch.Tensor:
        if self.work is None:
            self.work = torch.empty_like(self.base)
        return self.work

    def moment_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.exp_avg is None:
            self.exp_avg, self.exp_avg_sq = torch.empty_like(self.base), torch.empty_like(self.base)
        return self.exp_avg, self.exp_avg_sq


class WeightSnapshot:
    """A model's weights, restorable bit for bit by pointer swaps: no copy at reset, no reload.

    Double buffering. The snapshot keeps *references* to the parameters' tensors (the "base") and,
    per trained parameter, a "work" tensor and Adam's two moment tensors, allocated on first use
    and reused by every later prompt (no allocation, no page faults per prompt).
    ``first_adam_step`` points each parameter at its work tensor (``p.data = work``, filled from
    the base: the one copy per prompt, inside step 1), seeds the optimiser's state with the reused
    moments, and steps: this and every later step of the prompt write the work tensors only. ``restore`` points every parameter back at its
    base (``p.data = base``): the base is never written, so the restored model is bitwise the
    snapshot's by construction, for the price of a few hundred pointer swaps.
    Buffers are cloned (they are small, and some, like BatchNorm statistics, change in training)
    and copied back. Tied weights must be one Parameter, as Hugging Face ties them (counted once);
    distinct parameters sharing storage are refused, since swapping one would untie them.

    The base is shared with the model between prompts, so an in-place write to the model outside
    fine-tuning changes the snapshot too; ``equals`` detects it (checksums taken here), nothing can
    undo it: take a new snapshot after changing weights on purpose.
    """

    def __init__(self, model: torch.nn.Module):
        self._slots = {name: _Slot(name, p) for name, p in model.named_parameters()}
        self._by_param = {id(s.param): s for s in self._slots.values()}
        owners: dict[int, str] = {}
        for s in self._slots.values():
            if s.base.numel() == 0:
                continue
            ptr = s.base.untyped_storage().data_ptr()
            if ptr in owners:
                raise ValueError(f"parameters {owners[ptr]!r} and {s.name!r} share storage but are distinct "
                                 "Parameters; tie them as one Parameter (model.tie_weights()) to snapshot the model")
            owners[ptr] = s.name
        with torch.no_grad():
            self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def holds(self, model: torch.nn.Module) -> bool:
        """True when ``model``'s parameters are this snapshot's Parameters, each pointing at its base."""
        named = dict(model.named_parameters())
        return named.keys() == self._slots.keys() and all(
            named[n] is s.param and s.holds_base() for n, s in self._slots.items())

    def first_adam_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Take a fresh Adam's first step on the work buffers: each base is read, never written.

        For every parameter p of ``optimizer`` (a fresh ``torch.optim.Adam`` or ``AdamW``, fused or
        not, without amsgrad) that is at its base: work ← base, ``p.data = work``, and Adam's state
        ← {step: 0, exp_avg: 0, exp_avg_sq: 0} in reused buffers (what Adam's lazy initialisation
        creates, without allocating 2× the model in fresh, page-faulting memory); then
        ``optimizer.step()``. The update is torch's own (fused) kernel on the same numbers as an
        in-place first step, so the result is bitwise the same as without the snapshot.

        Why a copy and not the update computed out of place, work = base − lr·m̂/(√v̂ + eps): that
        takes six unfused element-wise passes, measured ~50 ms slower per prompt than one copy,
        two zero fills and the fused kernel on SmolLM2-135M (2 CPU threads; benchmarks/reset.py
        compares both). The copy is the price of never writing the base.
        """
        if not isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW):
            raise ValueError(f"first_adam_step needs torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
        with torch.no_grad():
            for group in optimizer.param_groups:
                if group.get("amsgrad"):
                    raise ValueError("first_adam_step does not support amsgrad=True")
                fused = bool(group.get("fused"))
                for p in group["params"]:
                    slot = self._by_param.get(id(p))
                    if slot is None or slot.param is not p:
                        raise ValueError("first_adam_step: the optimizer holds a parameter this snapshot was not "
                                         "taken of")
                    if optimizer.state.get(p):
                        raise ValueError(f"first_adam_step: {slot.name!r} already has optimizer state; "
                                         "the optimizer must be fresh")
                    if not slot.holds_base():
                        raise ValueError(f"first_adam_step: {slot.name!r} is not at the snapshot's weights")
                    work = slot.work_buffer()
                    work.copy_(slot.base)
                    p.data = work
                    if p.grad is None:
                        continue  # Adam skips it now; it would initialise its own state if a gradient came later
                    exp_avg, exp_avg_sq = slot.moment_buffers()
                    exp_avg.zero_()
                    exp_avg_sq.zero_()
                    step = (torch.zeros((), dtype=_step_dtype(fused), device=p.device)
                            if fused or group.get("capturable") else torch.tensor(0.0, dtype=_step_dtype(False)))
                    optimizer.state[p] = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        optimizer.step()

    def restore(self, model: torch.nn.Module) -> None:
        """Point every parameter back at its base tensor and copy the buffers back.

        No parameter data is copied: the base tensors were never written (see ``first_adam_step``).
        """
        with torch.no_grad():
            for name, p in model.named_parameters():
                slot = self._slots.get(name)
                if slot is None or slot.param is not p:
                    raise ValueError(f"restore: parameter {name!r} is not one this snapshot was taken of")
                if not slot.holds_base():
                    p.data = slot.base
            for name, b in model.named_buffers():
                saved = self.buffers.get(name)
                if saved is None:
                    raise ValueError(f"restore: buffer {name!r} is not one this snapshot was taken of")
                b.copy_(saved)

    def equals(self, model: torch.nn.Module) -> bool:
        """True when ``model`` has the snapshot's parameters and buffers, bit for bit as far as checked.

        Buffers: compared bitwise with their clones (NaN-safe). Parameters: same names, shapes and
        dtypes, and the same content checksum as when the snapshot was taken: the wrapped 64-bit
        sum of the tensor's bits read as integers, which changes with any single flipped bit (a
        guard against in-place writes; the restore itself is exact by construction).
        """
        with torch.no_grad():
            named = dict(model.named_parameters())
            if named.keys() != self._slots.keys():
                return False
            for name, p in named.items():
                s = self._slots[name]
                if p.shape != s.base.shape or p.dtype != s.base.dtype or _checksum(p.detach()) != s.checksum:
                    return False
            buffers = dict(model.named_buffers())
            if buffers.keys() != self.buffers.keys():
                return False
            for name, b in buffers.items():
                s = self.buffers[name]
                if s.shape != b.shape or s.dtype != b.dtype or not torch.equal(_bits(s), _bits(b.detach())):
                    return False
        return True


def _step_dtype(fused: bool) -> torch.dtype:
    """The dtype torch.optim.Adam gives its ``step`` counter (float32 when fused, else the default's precision)."""
    return torch.float64 if not fused and torch.get_default_dtype() == torch.float64 else torch.float32


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so that equality is bitwise (NaN == NaN, -0.0 != 0.0)."""
    return t.reshape(-1).view(torch.uint8) if t.is_floating_point() or t.is_complex() else t


def _checksum(t: torch.Tensor) -> int:
    """Wrapped sum of the tensor's bytes read as the widest integers that tile it (int64 for most).

    Any single flipped bit changes it (by ±2^k, never 0 modulo the integer's range); one read of
    the tensor, about as fast as a copy (an int64 sum of float32 weights: 23 ms for SmolLM2-135M).
    """
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        if raw.numel() % dtype.itemsize == 0:
            return int(raw.view(dtype).sum(dtype=dtype)) if raw.numel() else 0

