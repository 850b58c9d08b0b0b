"""torch.ao.quantization.quantize_dynamic (eager mode) for fastrnn modules, exactly as for torch.nn's.

Eager quantization keys on exact classes: `_propagate_qconfig_helper` looks a module's qconfig up by
`type_before_parametrizations(module)`, `swap_module` looks its quantized class up the same way, and
`nnqd.LSTM.from_float` (and the cells') assert `type(mod)` is torch.nn's. The fastrnn twins are other
classes (they subclass nn.RNNBase / nn.RNNCellBase, see modules.py), so without this file
quantize_dynamic(model, {nn.LSTM}) would silently leave a converted model's layers in float.

What this file does, on import (fastrnn/__init__.py imports it):
1. Wraps two per-module helpers in torch.ao.quantization.quantize, by rebinding that module's globals:
   - `_propagate_qconfig_helper`: a qconfig dict naming a torch.nn class (nn.LSTM: qconfig) also
     names its fastrnn twin, unless the dict names the twin itself;
   - `swap_module`: a twin that the mapping does not name (or names only through the default entry
     of step 2) is swapped as torch.nn's twin would be by that mapping: through its torch.nn twin on
     the very same Parameters (modules.torch_nn_twin), so the result is the quantized class torch.nn
     gets, built from the same weights. No entry for torch.nn's class: no swap, as for torch.nn.
   These two, not quantize_dynamic / propagate_qconfig_ / convert, because everything that quantizes
   in eager mode reaches them through a global lookup at call time: quantize_dynamic, quantize,
   prepare, and propagate_qconfig_ / convert called by hand, whatever names the user imported
   before fastrnn (`from torch.ao.quantization import convert` binds the unwrapped function, which
   still calls the wrapped swap_module).
2. Adds the twins to torch's default dynamic mapping (DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS), as
   small classes whose from_float quantizes through torch.nn's twin. This keeps the twins in
   get_default_qconfig_propagation_list() as torch.nn's classes are, and makes
   get_dynamic_quant_module_class(fastrnn.LSTM) and other users of the default mapping work. In a
   mapping, such an entry only means "as torch.nn's class": the swap_module wrapper defers to the
   mapping's entry for torch.nn's class, so a user's copy of the default mapping that retargets or
   drops nn.LSTM does the same to fastrnn.LSTM.

Both steps are idempotent (a second import or importlib.reload changes nothing). FX graph mode
quantization (prepare_fx) and quantize_dynamic_jit are not covered here.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping

from torch.nn.utils.parametrize import type_before_parametrizations

from . import modules

# import_module, not `import torch.ao.quantization.quantize as ...`, which gives the package's function quantize().
_quantize = importlib.import_module("torch.ao.quantization.quantize")
_mappings = importlib.import_module("torch.ao.quantization.quantization_mappings")

_TORCH_NN_OF = modules.TORCH_NN_OF  # fastrnn twin -> its torch.nn class, e.g. fastrnn.LSTM -> nn.LSTM


def _stand_in(mod):
    """torch.nn's twin of the fastrnn `mod` on the very same Parameters, with its qconfig and hook registries
    (swap_module carries the hooks over to the quantized module). A parametrized `mod` is returned as is:
    torch's from_float refuses it, as it refuses a parametrized torch.nn module."""
    if type(mod) not in _TORCH_NN_OF:
        return mod
    twin = modules.torch_nn_twin(mod)
    twin.qconfig = mod.qconfig
    for name in modules._HOOK_DICTS:
        if hasattr(mod, name):
            setattr(twin, name, getattr(mod, name))
    return twin


class _ViaTorchNN:
    """Default dynamic-mapping entry for a fastrnn twin: quantizes it as torch.nn's class is quantized."""

    _fastrnn_via_torch_nn = True  # the marker the swap_module wrapper recognises (also across reloads)
    torch_nn_class: type
    quantized_class: type

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        return cls.quantized_class.from_float(_stand_in(mod), use_precomputed_fake_quant=use_precomputed_fake_quant)


def _is_default_entry(target) -> bool:
    return getattr(target, "_fastrnn_via_torch_nn", False)


def _with_twins(qconfig_dict):
    """`qconfig_dict`, plus twin: qconfig for each torch.nn class it names whose twin it does not name."""
    if not isinstance(qconfig_dict, Mapping):
        return qconfig_dict
    missing = {twin: qconfig_dict[nn_cls] for twin, nn_cls in _TORCH_NN_OF.items()
               if nn_cls in qconfig_dict and twin not in qconfig_dict}
    return {**qconfig_dict, **missing} if missing else qconfig_dict


def _wrap_propagate_qconfig_helper(original):
    @functools.wraps(original)
    def _propagate_qconfig_helper(module, qconfig_dict, *args, **kwargs):
        # fastrnn: a qconfig for torch.nn's nn.LSTM (etc.) also applies to fastrnn.LSTM (see fastrnn/_quantization.py).
        return original(module, _with_twins(qconfig_dict), *args, **kwargs)

    _propagate_qconfig_helper._fastrnn_hook = True
    return _propagate_qconfig_helper


def _wrap_swap_module(original):
    @functools.wraps(original)
    def swap_module(mod, mapping, custom_module_class_mapping, *args, **kwargs):
        # fastrnn: a twin the mapping does not name itself is swapped as torch.nn's class would be (see
        # fastrnn/_quantization.py); everything else goes to torch's swap_module untouched.
        cls = type_before_parametrizations(mod)
        nn_cls = _TORCH_NN_OF.get(cls)
        if (nn_cls is None or getattr(mod, "qconfig", None) is None or cls in custom_module_class_mapping
                or (cls in mapping and not _is_default_entry(mapping[cls]))):
            return original(mod, mapping, custom_module_class_mapping, *args, **kwargs)
        if nn_cls not in mapping:
            return mod  # torch.nn's class would not be swapped by this mapping either
        if type(mod) is not cls:  # parametrized: handed over as is, as a parametrized torch.nn module is
            mapping = {**mapping, cls: mapping[nn_cls]}
            return original(mod, mapping, custom_module_class_mapping, *args, **kwargs)
        stand_in = _stand_in(mod)
        swapped = original(stand_in, mapping, custom_module_class_mapping, *args, **kwargs)
        return mod if swapped is stand_in else swapped

    swap_module._fastrnn_hook = True
    return swap_module


def _install() -> None:
    for name, wrap in (("_propagate_qconfig_helper", _wrap_propagate_qconfig_helper),
                       ("swap_module", _wrap_swap_module)):
        current = getattr(_quantize, name)
        if not getattr(current, "_fastrnn_hook", False):
            setattr(_quantize, name, wrap(current))
    defaults = _mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS
    for twin, nn_cls in _TORCH_NN_OF.items():
        target = defaults.get(nn_cls)
        if target is None or twin in defaults:  # nn.RNN has no dynamic quantized class; already added
            continue
        defaults[twin] = type(f"{twin.__name__}ViaTorchNN", (_ViaTorchNN,), {
            "__module__": __name__, "__qualname__": f"{twin.__name__}ViaTorchNN",
            "__doc__": f"Quantizes a fastrnn.{twin.__name__} as torch.nn.{nn_cls.__name__}: {target.__module__}."
                       f"{target.__qualname__}.from_float on its torch.nn twin.",
            "torch_nn_class": nn_cls, "quantized_class": target})


_install()
