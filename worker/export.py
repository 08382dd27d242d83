"""A trained model as plain PyTorch: the source of a script that builds the network a spec describes, module for
module as `create_model` builds it, so that the checkpoint's state_dict loads into it, and that predicts with a
checkpoint file. What a learner takes home: their experiment as code they can read, change and run without
trainlab.

The script is written from the built network itself, not from the spec: a layer of `torch.nn` is written as its
constructor call (`extra_repr()` lists the constructor's arguments for every layer the registry uses); nested
`nn.Sequential`s as such; the torchvision classifiers through `TransferNet` and their backbone's recipe below.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

from torch import nn

from worker.models import TransferNet

# How `create_model` cuts each torchvision classifier down to its features (worker/models.py `_torchvision`).
BACKBONES = {
    "resnet18": 'without_head(torchvision.models.resnet18(), "fc")',
    "mobilenet_v2": "nn.Sequential(torchvision.models.mobilenet_v2().features, nn.AdaptiveAvgPool2d(1), nn.Flatten())",
}


class NotExportable(ValueError):
    """A module the script cannot write as code."""


def model_code(model: nn.Module, kind: str) -> str:
    """`def build_model()`: a network `create_model` built for a model spec of `kind` (on any device), as PyTorch
    code (what POST /experiments:validate shows)."""
    return f"def build_model() -> nn.Module:\n    return {_source(model, kind)}\n"


def model_script(model: nn.Module, spec: Any, title: str) -> str:
    """The script for the network `create_model` built for an experiment spec; `title` opens its docstring (which
    experiment, which checkpoint)."""
    transfer = isinstance(model, TransferNet)
    safe_title = title.replace("\\", "/").replace('"', "'")  # inside the script's docstring
    parts = [
        HEADER.format(title=safe_title, torchvision=" and torchvision" if transfer else ""),
        IMPORTS.format(torchvision="import torchvision\n" if transfer else ""),
        (
            "\n# A regression's model outputs the standardised target; a classifier's, one logit per class.\n"
            f"REGRESSION = {spec.task == 'regression'}\n"
        ),
        _transfer_source() if transfer else "",
        f"\n\n{model_code(model, spec.model.kind)}",
        MAIN,
    ]
    return "".join(parts)


def _source(module: nn.Module, kind: str, indent: str = "    ") -> str:
    inner = indent + "    "
    if isinstance(module, TransferNet):
        arguments = [BACKBONES[kind], _source(module.head, kind, inner), f"image_size={module.image_size}",
                     f"frozen={module.frozen}"]  # fmt: skip
        return "TransferNet(\n" + "".join(f"{inner}{argument},\n" for argument in arguments) + f"{indent})"
    if type(module) is nn.Sequential:
        children = "".join(f"{inner}{_source(child, kind, inner)},\n" for child in module.children())
        return f"nn.Sequential(\n{children}{indent})"
    if type(module).__module__.startswith("torch.nn.modules.") and not any(module.children()):
        return _constructor_call(module)
    raise NotExportable(f"no code for a {type(module).__name__} module")


def _constructor_call(module: nn.Module) -> str:
    """`nn.Conv2d(1, 32, kernel_size=3, padding=1)`: the layer's `extra_repr()` (its constructor's arguments),
    without the arguments at their defaults, so that it reads as one would write it and runs on other torch
    versions (whose layers may take arguments that this one shows)."""
    call = ast.parse(f"f({module.extra_repr()})", mode="eval").body
    assert isinstance(call, ast.Call)
    defaults = {name: p.default for name, p in inspect.signature(type(module)).parameters.items()}
    arguments = [repr(_collapsed(ast.literal_eval(arg))) for arg in call.args]
    for keyword in call.keywords:
        value = _collapsed(ast.literal_eval(keyword.value))
        default = defaults.get(keyword.arg, inspect.Parameter.empty)
        if not (type(value) is type(default) and value == default):
            arguments.append(f"{keyword.arg}={value!r}")
    return f"nn.{type(module).__name__}({', '.join(arguments)})"


def _collapsed(value: object) -> object:
    """(3, 3) -> 3: what a 2d layer's square kernel, stride or padding is written as."""
    if isinstance(value, tuple) and value and all(v == value[0] and type(v) is type(value[0]) for v in value):
        return value[0]
    return value


def _transfer_source() -> str:
    """TransferNet as the script defines it: the class itself, and the backbone cut."""
    source = textwrap.dedent(inspect.getsource(TransferNet))
    return f"\n\n{source}\n\n{WITHOUT_HEAD}"


HEADER = '''"""{title}.

The model in plain PyTorch, built module for module as trainlab builds it, so that the checkpoint's weights load
into it. Needs torch{torchvision}, and Pillow to read an image.

    python this_file.py CHECKPOINT.pt IMAGE.png       # a model trained on images: its top classes
    python this_file.py CHECKPOINT.pt 0.5 -1.2 ...    # a model trained on a table: one row's feature values

The checkpoint (GET /experiments/ID/checkpoint.pt) also holds the preprocessing ("preprocess": the input size and
each channel's or feature's mean and std) and the class names. An image is read as trainlab reads it
(worker/preprocess.py): turned upright by its EXIF orientation, 16-bit grey scaled to 8 bits, transparency laid over
white, and, at another size, scaled by its shorter side and centre-cropped.
"""

from __future__ import annotations

'''

IMPORTS = """import sys

import torch
import torch.nn.functional as F
{torchvision}from torch import nn
"""

WITHOUT_HEAD = '''def without_head(model: nn.Module, name: str) -> nn.Module:
    """`model` with its classifier `name` replaced by an identity: it outputs the features."""
    setattr(model, name, nn.Identity())
    return model
'''

MAIN = '''

def model_input(checkpoint: dict, args: list[str]) -> torch.Tensor:
    """A batch of one input, standardised as in training."""
    pre = checkpoint["preprocess"]
    if pre["height"] == pre["width"] == 1:  # a table: the features as channels of a 1x1 "image"
        if len(args) != pre["channels"]:
            names = pre.get("feature_names") or ["VALUE"] * pre["channels"]
            sys.exit(f"give the row's {pre['channels']} values, in this order: {' '.join(names)}")
        x = torch.tensor([float(value) for value in args]).view(1, -1, 1, 1)
    else:
        from PIL import Image, ImageOps

        width, height = pre["width"], pre["height"]
        image = Image.open(args[0])
        try:
            image = ImageOps.exif_transpose(image)  # phones store photos sideways
        except Exception:  # EXIF that does not parse is ignored, as browsers do
            pass
        if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit grey: the high byte (L would clip to white)
            image = image.convert("I").point(lambda v: v / 256).convert("L")
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:  # over white, as a page shows it
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        image = image.convert("L" if pre["channels"] == 1 else "RGB")
        if image.size != (width, height):
            scale = max(width / image.width, height / image.height)
            size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (size[0] - width) // 2, (size[1] - height) // 2
            image = image.crop((left, top, left + width, top + height))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        x = pixels.view(1, height, width, pre["channels"]).permute(0, 3, 1, 2).float() / 255
    if note := outside(pre, x):
        print(f"note: {note}: outside what the model learnt from, so its prediction extrapolates", file=sys.stderr)
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


def outside(pre: dict, x: torch.Tensor) -> str:
    """What of the input lies outside the training data's range the checkpoint keeps, named with that range: a
    table's values, or an image's mean brightness (from 0, black, to 1, white)."""
    if pre.get("low"):
        names = pre.get("feature_names") or [f"feature {i}" for i in range(len(pre["low"]))]
        columns = zip(names, x.flatten().tolist(), pre["low"], pre["high"])
        return ", ".join(f"{n} = {v:g} (learnt from {lo:g} to {hi:g})" for n, v, lo, hi in columns if not lo <= v <= hi)
    if pre.get("brightness"):
        (low, high), brightness = pre["brightness"], x.mean().item()
        if not low <= brightness <= high:
            return f"mean brightness = {brightness:.2f} (learnt from {low:.2f} to {high:.2f})"
    return ""


def main(checkpoint_path: str, *args: str) -> None:
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    model = build_model()
    model.load_state_dict(checkpoint["model"])
    model.eval()
    with torch.no_grad():
        output = model(model_input(checkpoint, list(args)))[0]
    if REGRESSION:
        pre = checkpoint["preprocess"]
        print(f"{output[0].item() * pre['target_std'] + pre['target_mean']:.6g}")
        return
    probabilities = F.softmax(output, dim=0)
    for probability, label in zip(*probabilities.topk(min(5, len(probabilities)))):
        print(f"{checkpoint['class_names'][label]}\\t{probability.item():.6f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
'''
