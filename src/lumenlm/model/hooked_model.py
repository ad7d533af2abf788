"""`HookedModel`: the TransformerLens-style hook API that `GPT` inherits.

`hooks()` is a context that attaches `(name_or_filter, fn)` pairs and always removes
them, even on an exception; `run_with_hooks` is one forward pass inside it;
`run_with_cache` keeps the activations a filter selects in an `ActivationCache`.
Unknown names are refused with the closest real ones (difflib).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor, nn

from lumenlm.errors import ConfigError
from lumenlm.model.activation_cache import ActivationCache
from lumenlm.model.hook_points import HookFn, HookPoint, HookSwitch, NameFilter, tl_name


class HookedModel(nn.Module):
    """The hook API shared by `GPT`: name lookup, the hooks context, run_with_*."""

    def name_hook_points(self) -> None:
        """Give every HookPoint its TransformerLens name and the model's switch (call
        once, after building)."""
        self._hook_switch = HookSwitch()
        for path, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = tl_name(path)
                module.switch = self._hook_switch

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Every hook point by name (blocks first, in module order)."""
        return {m.name: m for m in self.modules() if isinstance(m, HookPoint)}

    def hook_points(self, names: NameFilter = None) -> list[HookPoint]:
        """The hook points `names` selects; an unknown name raises ConfigError with the
        closest existing names."""
        points = self.hook_dict
        if names is None:
            return list(points.values())
        if callable(names):
            return [hp for n, hp in points.items() if names(n)]
        out = []
        for name in [names] if isinstance(names, str) else names:
            if name not in points:
                close = difflib.get_close_matches(name, list(points), n=5, cutoff=0.6)
                hint = f"close names: {', '.join(close)}" if close else "see model.hook_dict"
                raise ConfigError(f"no hook point named {name!r}; {hint}")
            out.append(points[name])
        return out

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = ()) -> Iterator[Any]:
        """Attach `(name_or_filter, fn)` pairs for the duration of the block; they are
        removed on leaving it, also when it raises. All names are checked before any
        hook is attached."""
        resolved = [(self.hook_points(names), fn) for names, fn in fwd_hooks]
        handles: list[Any] = []
        try:
            for points, fn in resolved:
                handles.extend(hp.add_hook(fn) for hp in points)
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point (e.g. after `hp.add_hook` by hand)."""
        for hp in self.hook_dict.values():
            hp._forward_hooks.clear()
        self._hook_switch.count = 0

    def run_with_hooks(
        self,
        tokens: Tensor,
        *args: Any,
        fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = (),
        **kwargs: Any,
    ) -> Any:
        """`self(tokens, ...)` with `fwd_hooks` attached for this one call; returns what the
        forward returns (a `ModelOutput`)."""
        with self.hooks(fwd_hooks):
            return self(tokens, *args, **kwargs)

    def run_with_cache(
        self,
        tokens: Tensor,
        *args: Any,
        names_filter: NameFilter = None,
        fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = (),
        device: Any = None,
        **kwargs: Any,
    ) -> tuple[Tensor, ActivationCache]:
        """Run once and return `(logits, cache)`; the cache holds only the activations
        `names_filter` selects (all when None), detached, optionally moved to `device`.
        `fwd_hooks` run too, before the caching hooks (a patched run's cache)."""
        store: dict[str, Tensor] = {}

        def save(x: Tensor, hook: HookPoint) -> None:
            x = x.detach()
            store[hook.name] = x.to(device) if device is not None else x

        with self.hooks(list(fwd_hooks)), self.hooks([(names_filter, save)]):
            out = self(tokens, *args, **kwargs)
        return out.logits, ActivationCache(store, self)
