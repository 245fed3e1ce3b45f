import torch
import torchvision

from fastconv import ops

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

    ``activation`` must be ``torch.nn.ReLU`` or ``torch.nn.SiLU`` and ``scale_activation`` ``torch.nn.Sigmoid``
    or ``torch.nn.Hardsigmoid`` (the SE-ResNet, EfficientNet and MobileNetV3 choices).
    """

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation=torch.nn.ReLU,
        scale_activation=torch.nn.Sigmoid,
    ) -> None:
        activation_name = _op_name(_ACTIVATIONS, activation, "activation")
        gate_name = _op_name(_GATES, scale_activation, "scale_activation")
        super().__init__(input_channels, squeeze_channels, activation, scale_activation)
        self._activation_name = activation_name
        self._gate_name = gate_name

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
        into this class in place, for fastconv.optimize; its parameters are kept."""
        activation, gate = cls._activation_and_gate(module)
        activation_name = _op_name(_ACTIVATIONS, type(activation), "activation")
        gate_name = _op_name(_GATES, type(gate), "scale_activation")
        module.__class__ = cls
        module._activation_name, module._gate_name = activation_name, gate_name
        return module

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.squeeze_excite(
            input, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self._activation_name, self._gate_name
        )
