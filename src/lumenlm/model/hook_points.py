"""Hook points: named places in the forward pass where a function may read or replace
an activation (caching, activation patching, ablation, steering).

A `HookPoint` is an identity module, as in TransformerLens. The model calls one only
when a hook is attached (`hp.active`), so a model with no hooks runs the same code as
before hooks existed and `torch.compile` sees no extra modules. Names and shapes are
TransformerLens's where the two overlap; `GPT.hook_dict` lists them all.

`hooked_model.HookedModel` gives `GPT` the TransformerLens-style API on top.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
"""`fn(activation, hook)`: return None to leave the activation, or a tensor of the same
shape to replace it. `hook.name` says where it was called."""
NameFilter = str | Sequence[str] | Callable[[str], bool] | None
"""One hook name, a list of names, a predicate on names, or None for every hook point."""

# Module paths of the norms -> TransformerLens's names for them.
_TL_NAMES = (
    (re.compile(r"\battn_norm\b"), "ln1"),
    (re.compile(r"\bmlp_norm\b"), "ln2"),
    (re.compile(r"^final_norm\b"), "ln_final"),
)


def tl_name(module_path: str) -> str:
    """`blocks.0.attn_norm.hook_scale` -> `blocks.0.ln1.hook_scale` (TransformerLens)."""
    for pattern, repl in _TL_NAMES:
        module_path = pattern.sub(repl, module_path)
    return module_path


class HookSwitch:
    """How many hooks `add_hook` has attached to one model's hook points. The model
    reads it once per forward: at zero it looks at no hook point at all."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class _Handle:
    """`add_hook`'s handle: `remove()` detaches the hook and counts it off, once."""

    def __init__(self, handle: RemovableHandle, switch: HookSwitch) -> None:
        self.handle, self.switch, self.removed = handle, switch, False

    def remove(self) -> None:
        if not self.removed:
            self.removed = True
            self.handle.remove()
            self.switch.count = max(0, self.switch.count - 1)


class HookPoint(nn.Module):
    """An identity the model calls only when a hook is attached; `name` and `switch` are
    set by the model. Attach hooks with `add_hook` (or the model's `hooks()`), which
    counts them on the switch: a hook registered with `register_forward_hook` directly
    is not counted, and does not run while no counted hook is attached."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.switch = HookSwitch()

    @property
    def active(self) -> bool:
        """Whether a forward hook is attached (the model skips the call otherwise)."""
        return bool(self._forward_hooks)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def add_hook(self, fn: HookFn) -> _Handle:
        """Attach `fn(activation, hook)`; a returned tensor replaces the activation."""

        def call(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            new = fn(output, self)
            if new is not None and new.shape != output.shape:
                raise ValueError(
                    f"the hook on {self.name} returned shape {tuple(new.shape)}; "
                    f"it must keep {tuple(output.shape)}"
                )
            return new

        handle = _Handle(self.register_forward_hook(call), self.switch)
        self.switch.count += 1
        return handle

    def extra_repr(self) -> str:
        return self.name
