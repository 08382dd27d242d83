"""Model registry (timm-style): a spec's `kind` names the builder. Training and inference both call
`create_model`, so a checkpoint always rebuilds the exact architecture it was trained with.

Builders get the input shape ((C, H, W); tabular rows are (F, 1, 1)) and the number of outputs (the dataset's
classes, or 1 for regression). Pretrained weights are not loaded here: see `worker.pretrained`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.specs import CNNSpec, LinearSpec, MLPSpec, PretrainedSpec, SequentialSpec
from worker.datasets import DatasetInfo
from worker.preprocess import Preprocess

InputShape = tuple[int, int, int]  # (C, H, W)
Shape = tuple[int, ...]  # one example's shape, without the batch dimension
Builder = Callable[[Any, InputShape, int], nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register_model(*kinds: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        for kind in kinds:
            if kind in _BUILDERS:
                raise ValueError(f"model {kind!r} registered twice")
            _BUILDERS[kind] = builder
        return builder

    return decorator


def model_kinds() -> list[str]:
    return sorted(_BUILDERS)


def create_model(spec: Any, input_shape: InputShape, num_outputs: int) -> nn.Module:
    """Build the network a model spec describes, for inputs of `input_shape` and `num_outputs` outputs.
    Raises ShapeError when the spec cannot work on that input."""
    return initialise(_BUILDERS[spec.kind](spec, input_shape, num_outputs), getattr(spec, "init", "default"))


def initialise(model: nn.Module, init: str) -> nn.Module:
    """Draw the weights of every conv and linear layer as `init` says (service.specs.Init), biases 0; "default"
    leaves torch's own. From the global generator, as the layers' own initialisation draws."""
    draw = {"kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), "xavier": nn.init.xavier_uniform_}
    if init in draw:
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                draw[init](module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return model


def meta_model(spec: Any, input_shape: InputShape, num_outputs: int) -> nn.Module:
    """The network a model spec describes, on the meta device: its shapes and parameters without memory or
    initialisation."""
    with torch.device("meta"):
        return create_model(spec, input_shape, num_outputs)


def uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class BatchError(ValueError):
    """A training batch that a layer cannot take: batchnorm given one value per channel."""


class ShapeError(ValueError):
    """A layer that cannot take the shape its predecessor gives it; `index` is the layer's position."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index

    @classmethod
    def at(cls, index: int, kind: str, input_shape: Shape, problem: str) -> ShapeError:
        return cls(index, f"layer {index} ({kind}) gets input of shape {list(input_shape)}: {problem}")


@dataclass(frozen=True)
class LayerReport:
    index: int
    kind: str
    output_shape: Shape
    parameters: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs, in fp32: all weights; gradients and optimizer state for the trained ones;
    activations: what autograd keeps of a batch for the backward pass, plus twice the largest layer output (a
    layer's input and output alive at once in the forward pass, their gradients in the backward pass); data: the
    dataset's examples and, where `worker.engine.fit` standardises a split once, its fp32 copy; features: a frozen
    backbone's, computed once and kept. An estimate: the first four parts came to 0.74-0.85 of a ResNet18 step's
    measured peak (docs/PERFORMANCE.md)."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    data: int
    features: int

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


@dataclass(frozen=True)
class ModelReport:
    layers: list[LayerReport]
    parameters: int
    trainable_parameters: int
    memory: MemoryEstimate


def _optimizer_states(spec: Any) -> int:
    """Values an optimizer keeps per trained parameter: Adam(W)'s two moments, SGD's momentum buffer (none without
    momentum), RMSprop's average of squares and, with momentum, its buffer."""
    momentum = int(getattr(spec, "momentum", 0) > 0)
    return {"adam": 2, "adamw": 2, "sgd": momentum, "rmsprop": 1 + momentum}[spec.kind]


def describe_model(spec: Any, model: nn.Module, info: DatasetInfo) -> ModelReport:
    """What `POST /experiments:validate` shows of an experiment spec's model, built by `meta_model` for the
    dataset `info` describes. Raises BatchError when the model cannot train on batches of the spec's
    `batch_size`."""
    shape, examples = info.preprocess.input_shape, info.size
    layers, saved, largest = describe(model, shape, spec.batch_size)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    states = _optimizer_states(spec.optimizer)
    # `fit` standardises the validation split once, and the training split too with no augmentation between;
    # a frozen backbone's inputs instead batch by batch, keeping its features of those splits.
    once = round(examples * spec.dataset.val_fraction) if spec.augment else examples
    frozen = isinstance(model, TransferNet) and model.frozen
    values = _numel(shape)
    data = examples * values * (4 if info.tabular else 1) + (0 if frozen else 4 * once * values)
    features = 0
    if frozen:
        head = next(m for m in model.head.modules() if isinstance(m, nn.Linear))
        features = 4 * once * head.in_features
    activations = saved + 4 * 2 * spec.batch_size * largest
    memory = MemoryEstimate(4 * parameters, 4 * trainable, 4 * trainable * states, activations, data, features)
    return ModelReport(layers, parameters, trainable, memory)


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def describe(model: nn.Module, input_shape: InputShape, batch_size: int) -> tuple[list[LayerReport], int, int]:
    """From a training step's forward pass of a meta-device model over a batch: each top-level layer's output shape
    and parameters, the bytes autograd saves for the backward pass (activations, pooling indices, dropout masks;
    nothing of a frozen backbone's), and the values in the largest output of a leaf module for one example.
    Raises BatchError where a batchnorm layer would get one value per channel, which it cannot normalise."""
    children = list(model.named_children())
    shapes: dict[int, Shape] = {}
    # By storage (meta storages have no data pointer: keyed by the storage itself), so that a tensor saved by two
    # layers, or a view of it, counts once.
    saved: dict[int, int] = {}
    largest = [0]

    def save(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, nn.Parameter):
            storage = tensor.untyped_storage()
            saved[storage._cdata] = storage.nbytes()
        return tensor

    def measure(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        largest[0] = max(largest[0], _numel(tuple(out.shape[1:])))

    def check(name: str, module: nn.Module, x: torch.Tensor) -> None:
        if module.training and x.numel() == x.shape[1]:
            raise BatchError(
                f"batch_size {batch_size} gives batchnorm layer {name!r} one value per channel (input "
                f"{list(x.shape)}), which it cannot normalise in training: use a batch_size of at least 2"
            )

    hooks = [
        child.register_forward_hook(lambda _m, _i, out, i=i: shapes.__setitem__(i, tuple(out.shape[1:])))
        for i, (_, child) in enumerate(children)
    ]
    hooks += [m.register_forward_hook(measure) for m in model.modules() if not any(m.children())]
    hooks += [
        m.register_forward_pre_hook(lambda m, args, name=name: check(name, m, args[0]))
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(save, lambda tensor: tensor):
            model.train()(torch.empty((batch_size, *input_shape), device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    layers = [
        LayerReport(i, layer_kind(child), shapes[i], sum(p.numel() for p in child.parameters()))
        for i, (_, child) in enumerate(children)
        if i in shapes
    ]
    return layers, sum(saved.values()), largest[0]


def layer_kind(module: nn.Module) -> str:
    """A layer's kind: the name a `sequential` spec gave it, else its torch.nn class in lower case ("conv2d")."""
    return getattr(module, "kind", None) or type(module).__name__.lower()


def _conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# The activations a spec names (service.specs.Activation, and `sequential` layers of those kinds).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
}  # fmt: skip
# The increasing piecewise-linear ones: they commute with a max-pool exactly, in any precision, and can work in
# place (autograd recovers their gradient from their output, which keeps the input's sign).
PIECEWISE_LINEAR = ("relu", "leaky_relu")


def _activation(kind: str, *, in_place: bool = False, **options: float) -> nn.Module:
    """An activation layer; `in_place` (one output less to allocate) where the kind allows it."""
    return ACTIVATIONS[kind](**options, **({"inplace": True} if in_place and kind in PIECEWISE_LINEAR else {}))


@register_model("linear")
def _linear(spec: LinearSpec, input_shape: InputShape, num_outputs: int) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_outputs))


@register_model("mlp")
def _mlp(spec: MLPSpec, input_shape: InputShape, num_outputs: int) -> nn.Module:
    c, h, w = input_shape
    layers: list[nn.Module] = [nn.Flatten()]
    width = c * h * w
    for hidden in spec.hidden:
        layers.append(nn.Linear(width, hidden, bias=not spec.batchnorm))  # batchnorm's shift does a bias's work
        if spec.batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(_activation(spec.activation, in_place=True))
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


@register_model("cnn")
def _cnn(spec: CNNSpec, input_shape: InputShape, num_outputs: int) -> nn.Module:
    """Blocks of conv -> [batchnorm] -> activation -> 2x2 pool; pooling stops once the feature map is 1 pixel.
    Max-pooling is placed before a ReLU or leaky ReLU: the two commute (same outputs, same gradients;
    tests/test_examples.py trains both orders), and the activation then runs on a quarter of the values: +0-8%
    samples/s on a CPU (A/B runs)."""
    c, h, w = input_shape
    pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}[spec.pool]
    padding = spec.kernel_size // 2 if spec.padding is None else spec.padding
    layers: list[nn.Module] = []
    for index, channels in enumerate(spec.channels):
        h2, w2 = (_conv_size(s, spec.kernel_size, spec.stride, padding) for s in (h, w))
        if min(h2, w2) < 1:
            problem = f"its conv would output [{channels}, {h2}, {w2}]: use fewer blocks, a smaller stride or padding"
            raise ShapeError.at(index, "conv block", (c, h, w), problem)
        layers.append(nn.Conv2d(c, channels, spec.kernel_size, spec.stride, padding, bias=not spec.batchnorm))
        if spec.batchnorm:
            layers.append(nn.BatchNorm2d(channels))
        c, h, w = channels, h2, w2
        activation = _activation(spec.activation, in_place=True)
        if pool is not None and min(h, w) >= 2:
            # Not with an average; GELU is not increasing; sigmoid and tanh would commute but for rounding.
            first = spec.pool == "max" and spec.activation in PIECEWISE_LINEAR
            layers += [pool(2), activation] if first else [activation, pool(2)]
            h, w = h // 2, w // 2
        else:
            layers.append(activation)
    layers += [nn.Flatten(), nn.Linear(c * h * w, spec.hidden), _activation(spec.activation, in_place=True)]
    if spec.dropout:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(spec.hidden, num_outputs))
    return nn.Sequential(*layers)


def _sequential_layer(layer: Any, index: int, shape: Shape, num_outputs: int) -> tuple[nn.Module, Shape]:
    """One layer of a `sequential` spec for an input of `shape`, and its output shape."""

    def fail(problem: str) -> ShapeError:
        return ShapeError.at(index, layer.kind, shape, problem)

    def spatial(what: str) -> tuple[int, int, int]:
        if len(shape) != 3:
            raise fail(f"{what} needs a [channels, height, width] input; this layer comes after a flatten or linear")
        return shape  # type: ignore[return-value]

    def shrunk(c: int, h: int, w: int, kernel: int, stride: int, padding: int) -> Shape:
        out = (c, _conv_size(h, kernel, stride, padding), _conv_size(w, kernel, stride, padding))
        if min(out[1:]) < 1:
            raise fail(f"the output would be {list(out)}: the map is smaller than the kernel")
        return out

    kind = layer.kind
    if kind == "conv2d":
        c, h, w = spatial("conv2d")
        if layer.in_channels not in (None, c):
            raise fail(f"in_channels is {layer.in_channels} but the input has {c} channels")
        out = shrunk(layer.out_channels, h, w, layer.kernel_size, layer.stride, layer.padding)
        module = nn.Conv2d(c, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, bias=layer.bias)
        return module, out
    if kind == "batchnorm2d":
        c, _, _ = spatial("batchnorm2d")
        if layer.num_features not in (None, c):
            raise fail(f"num_features is {layer.num_features} but the input has {c} channels")
        return nn.BatchNorm2d(c), shape
    if kind == "batchnorm1d":
        if len(shape) != 1:
            raise fail("batchnorm1d needs a flat [features] input: put a flatten before it, or use batchnorm2d")
        if layer.num_features not in (None, shape[0]):
            raise fail(f"num_features is {layer.num_features} but the input has {shape[0]} features")
        return nn.BatchNorm1d(shape[0]), shape
    if kind in ("maxpool2d", "avgpool2d"):
        c, h, w = spatial(kind)
        if layer.padding * 2 > layer.kernel_size:
            raise fail(f"padding {layer.padding} is more than half of kernel_size {layer.kernel_size}")
        stride = layer.stride or layer.kernel_size
        pool = nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d
        return pool(layer.kernel_size, stride, layer.padding), shrunk(c, h, w, layer.kernel_size, stride, layer.padding)
    if kind == "adaptiveavgpool2d":
        c, _, _ = spatial(kind)
        return nn.AdaptiveAvgPool2d(layer.output_size), (c, layer.output_size, layer.output_size)
    if kind == "flatten":
        return nn.Flatten(), (_numel(shape),)
    if kind == "linear":
        if len(shape) != 1:
            raise fail("linear needs a flat [features] input: put a flatten before it")
        if layer.in_features not in (None, shape[0]):
            raise fail(f"in_features is {layer.in_features} but the input has {shape[0]} features")
        out = layer.out_features or num_outputs
        return nn.Linear(shape[0], out, bias=layer.bias), (out,)
    if kind == "dropout":
        return nn.Dropout(layer.p), shape
    options = {"negative_slope": layer.negative_slope} if kind == "leaky_relu" else {}
    return _activation(kind, **options), shape


def resolve_layers(spec: SequentialSpec, input_shape: InputShape, num_outputs: int) -> SequentialSpec:
    """The layer list with what was inferred written in: in_channels, num_features, in_features, out_features."""
    shape: Shape = input_shape
    layers = []
    for index, layer in enumerate(spec.layers):
        _, out = _sequential_layer(layer, index, shape, num_outputs)
        inferred = {
            "conv2d": {"in_channels": shape[0]},
            "batchnorm2d": {"num_features": shape[0]},
            "batchnorm1d": {"num_features": shape[0]},
            "linear": {"in_features": shape[0], "out_features": out[0]},
        }.get(layer.kind, {})
        layers.append(layer.model_copy(update=inferred))
        shape = out
    return spec.model_copy(update={"layers": layers})


@register_model("sequential")
def _sequential(spec: SequentialSpec, input_shape: InputShape, num_outputs: int) -> nn.Module:
    shape: Shape = input_shape
    modules = []
    for index, layer in enumerate(spec.layers):
        module, shape = _sequential_layer(layer, index, shape, num_outputs)
        module.kind = layer.kind  # named as in the spec in `describe`
        modules.append(module)
    if shape != (num_outputs,):
        last = len(spec.layers) - 1
        raise ShapeError(
            last,
            f"layer {last} ({spec.layers[last].kind}) outputs {list(shape)} but the model must output "
            f"[{num_outputs}] (one per class, or 1 for regression): end with a flatten and a linear layer "
            "(its out_features may be left out)",
        )
    return nn.Sequential(*modules)


# ImageNet's channel statistics, which ImageNet-trained weights expect their inputs standardised with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransferNet(nn.Module):
    """A torchvision backbone with a new head. Inputs are resized to `image_size` and grey ones repeated to three
    channels. With `frozen`, the backbone is neither trained nor does it update its batchnorm statistics."""

    def __init__(self, backbone: nn.Module, head: nn.Module, image_size: int, frozen: bool) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.image_size, self.frozen = image_size, frozen
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images as the backbone takes them: three channels, `image_size` square."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone makes of a batch of images: the head's inputs."""
        return self.backbone(self.resize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _head(features: int, num_outputs: int, dropout: float) -> nn.Module:
    linear = nn.Linear(features, num_outputs)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear


TORCHVISION_KINDS = ("resnet18", "mobilenet_v2")


@register_model(*TORCHVISION_KINDS)
def _torchvision(spec: PretrainedSpec, input_shape: InputShape, num_outputs: int) -> nn.Module:
    import torchvision  # here, not at the top: it pulls in torch._dynamo (a second and ~150 MB for every process)

    if input_shape[0] not in (1, 3):
        raise ShapeError.at(0, spec.kind, input_shape, f"{spec.kind} takes grey or RGB images")
    if spec.kind == "resnet18":
        backbone = torchvision.models.resnet18()
        features = backbone.fc.in_features
        backbone.fc = nn.Identity()
    else:
        net = torchvision.models.mobilenet_v2()
        features = net.last_channel
        backbone = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TransferNet(backbone, _head(features, num_outputs, spec.dropout), spec.image_size, spec.freeze == "backbone")


Step = Callable[[torch.Tensor], torch.Tensor]


def stages(model: nn.Module, prefix: str = "") -> list[tuple[str, Step]]:
    """The steps a model's forward pass takes, in order and named, such that applying each to the last one's output
    computes the model's output: a Sequential's layers ("3 relu"), a transfer net's resizing, the stages of its
    backbone ("backbone.layer1.0 basicblock") and its head. What each step makes of an image is
    `worker.model_views.layer_outputs`."""
    # A ResNet exists only once torchvision is imported; importing it for a plain Sequential would cost a second.
    torchvision = sys.modules.get("torchvision")
    resnet: tuple[type, ...] = (torchvision.models.ResNet,) if torchvision is not None else ()

    def named(name: str, module: nn.Module) -> list[tuple[str, Step]]:
        path = f"{prefix}{name}"
        # Exactly a Sequential: its subclasses (torchvision's conv-norm-activation) are steps of their own.
        if type(module) is nn.Sequential or isinstance(module, (TransferNet, *resnet)):
            return stages(module, f"{path}.")
        return [] if isinstance(module, nn.Identity) else [(f"{path} {layer_kind(module)}", module)]

    if isinstance(model, TransferNet):
        return [
            (f"{prefix}resize", model.resize),
            *named("backbone", model.backbone),
            *named("head", model.head),
        ]
    if isinstance(model, resnet):
        # ResNet.forward flattens the pooled features with a function, between its avgpool and fc modules.
        children = [(n, m) for n, m in model.named_children() if n != "fc"]
        children += [("flatten", nn.Flatten()), ("fc", model.fc)]
        return [step for name, child in children for step in named(name, child)]
    return [step for name, child in model.named_children() for step in named(name, child)]


def input_preprocess(spec: Any, preprocess: Preprocess) -> Preprocess:
    """The standardisation a model's inputs get: the dataset's, but ImageNet's for torchvision classifiers, whose
    weights (ImageNet's, or an earlier run's starting from them) expect it."""
    if spec.kind not in TORCHVISION_KINDS:
        return preprocess
    channels = preprocess.channels
    mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    return dataclasses.replace(preprocess, mean=mean, std=std)
