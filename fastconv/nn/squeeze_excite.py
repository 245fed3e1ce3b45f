import torch
import torchvision

from fastconv import ops
from fastconv.nn.batchnorm import has_hooks

_ACTIVATIONS = {torch.nn.ReLU: "relu", torch.nn.SiLU: "silu"}
_GATES = {torch.nn.Sigmoid: "sigmoid", torch.nn.Hardsigmoid: "hardsigmoid"}


def _op_name(table, module_class, argument):
    if module_class not in table:
        names = ", ".join(f"torch.nn.{cls.__name__}" for cls in table)
        raise ValueError(f"fastconv.nn.SqueezeExcitation: {argument} must be one of {names}, got {module_class!r}")
    return table[module_class]


class SqueezeExcitation(torchvision.ops.SqueezeExcitation):
    """Drop-in for ``torchvision.ops.SqueezeExcitation`` (same arguments, submodules and state_dict keys:
    fc1.weight, fc1.bias, fc2.weight, fc2.bias) running ``fastconv.ops.squeeze_excite``.

    The fused op implements ``activation`` ``torch.nn.ReLU`` or ``torch.nn.SiLU`` and ``scale_activation``
    ``torch.nn.Sigmoid`` or ``torch.nn.Hardsigmoid`` (the SE-ResNet, EfficientNet and MobileNetV3 choices). Any other
    activation (as torchvision accepts), a member with forward hooks, or a parametrized fc convolution runs
    torchvision's forward instead, as Conv2dNormActivation does for an activation it cannot fuse.
    """

    @classmethod
    def _activation_and_gate(cls, module: torch.nn.Module):
        """torchvision's SqueezeExcitation names them activation/scale_activation, timm's legacy SEModule
        relu/sigmoid (fc1/fc2 1x1 convs with bias; the same computation, as its forward pools with a mean)."""
        activation = module.activation if hasattr(module, "activation") else module.relu
        gate = module.scale_activation if hasattr(module, "scale_activation") else module.sigmoid
        return activation, gate

    @classmethod
    def can_adopt(cls, module: torch.nn.Module) -> bool:
        """Whether fastconv.optimize can swap `module`: its activation and gate are ones the op implements."""
        activation, gate = cls._activation_and_gate(module)
        return type(activation) in _ACTIVATIONS and type(gate) in _GATES

    @classmethod
    def adopt(cls, module: torch.nn.Module) -> "SqueezeExcitation":
        """Turn an SE module with the same parameters (torchvision's SqueezeExcitation, timm's legacy SEModule)
        into this class in place, for fastconv.optimize; its parameters are kept. Only where can_adopt: timm's
        module names its members relu/sigmoid, which torchvision's forward (the fallback) would not find."""
        activation, gate = cls._activation_and_gate(module)
        _op_name(_ACTIVATIONS, type(activation), "activation")
        _op_name(_GATES, type(gate), "scale_activation")
        module.__class__ = cls
        return module

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        modules = self._modules  # (nn.Module.__getattr__ costs ~0.4 us an attribute)
        activation, gate = self._activation_and_gate(self) if "activation" not in modules else (
            modules["activation"], modules["scale_activation"])
        activation_name, gate_name = _ACTIVATIONS.get(type(activation)), _GATES.get(type(gate))
        fc1, fc2 = modules["fc1"], modules["fc2"]
        if (activation_name is None or gate_name is None or any(has_hooks(m) for m in modules.values())
                or "weight" not in fc1._parameters or "weight" not in fc2._parameters):
            if "activation" in modules:
                return super().forward(input)
            # An adopted timm SEModule (members relu/sigmoid, no avgpool): its own forward's computation.
            return input * gate(fc2(activation(fc1(input.mean((2, 3), keepdim=True)))))
        return ops.squeeze_excite(input, fc1.weight, fc1.bias, fc2.weight, fc2.bias, activation_name, gate_name)
