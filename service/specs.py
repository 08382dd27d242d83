"""The contract between the API and the worker: what an experiment is, and what an epoch reports.

Pydantic only: this module must import neither torch nor SQLAlchemy, so that the API can validate a spec
without the engine and the engine can read one without the database.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Ids are PostgreSQL `integer` columns: a bigger number in a query is a 422 here, not an error there.
MAX_ID = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
# Printable text: no NUL (PostgreSQL refuses it) or other control characters.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=PRINTABLE)]


class Strict(BaseModel):
    """Unknown fields and NaN/inf are errors, not silently ignored values."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class DatasetSpec(Strict):
    name: Annotated[Name, Field(examples=["mnist-10k"])]
    val_fraction: Annotated[float, Field(gt=0.0, le=0.9)] = 0.2
    seed: Seed = 0
    # Fetch a standard dataset's files (mnist, fashion-mnist, cifar10) when they are missing, where the server
    # allows downloads (TRAINLAB_ALLOW_DOWNLOADS) and has internet.
    download: bool = False


class FromExperiment(Strict):
    """Start from the best checkpoint of an earlier experiment with the same model: to train on, or to fine-tune on
    another dataset of the same input shape. Every tensor must fit but the output layer's, which is new where the
    classes differ."""

    experiment: Annotated[int, Field(ge=1, le=MAX_ID)]


# A model built from scratch starts from random weights ("none") or from an earlier experiment's.
WarmStart = Literal["none"] | FromExperiment


# The nonlinearity after each hidden layer of an `mlp` or `cnn` (torch.nn's ReLU, LeakyReLU, GELU, Sigmoid, Tanh).
Activation = Literal["relu", "leaky_relu", "gelu", "sigmoid", "tanh"]
# How a model built from scratch draws its conv and linear weights: torch's own default (uniform within
# ±1/sqrt(fan_in)), He et al.'s (normal, std sqrt(2/fan_in), for ReLU nets) or Glorot and Bengio's (uniform, std
# sqrt(2/(fan_in + fan_out)), for tanh and sigmoid nets); the last two with zero biases.
Init = Literal["default", "kaiming", "xavier"]


class LinearSpec(Strict):
    """One linear layer on the flattened input: logistic regression for classes, linear regression for a target."""

    kind: Literal["linear"] = "linear"
    init: Init = "default"
    pretrained: WarmStart = "none"


class MLPSpec(Strict):
    """Hidden layers of the given widths (linear -> [batchnorm] -> activation -> [dropout]), then the output layer."""

    kind: Literal["mlp"] = "mlp"
    hidden: Annotated[list[Annotated[int, Field(ge=1, le=8192)]], Field(min_length=0, max_length=8)] = [256, 128]
    batchnorm: bool = False
    activation: Activation = "relu"
    dropout: Probability = 0.0
    init: Init = "default"
    pretrained: WarmStart = "none"


class CNNSpec(Strict):
    """Conv blocks (conv -> [batchnorm] -> activation -> pool) with the given channels, then one hidden fully
    connected layer. `padding` null keeps the map's size at stride 1 ("same"); pooling stops once the map is 1 pixel."""

    kind: Literal["cnn"] = "cnn"
    channels: Annotated[list[Annotated[int, Field(ge=1, le=1024)]], Field(min_length=1, max_length=6)] = [32, 64]
    kernel_size: Annotated[int, Field(ge=1, le=11)] = 3
    stride: Annotated[int, Field(ge=1, le=4)] = 1
    padding: Annotated[int, Field(ge=0, le=8)] | None = None
    pool: Literal["max", "avg", "none"] = "max"
    batchnorm: bool = False
    activation: Activation = "relu"
    hidden: Annotated[int, Field(ge=1, le=8192)] = 128
    dropout: Probability = 0.0
    init: Init = "default"
    pretrained: WarmStart = "none"


# Layers of a `sequential` model, with torch.nn's argument names. `in_channels`, `in_features` and
# `num_features` may be left out: they are inferred from the previous layer's output shape.
Size = Annotated[int, Field(ge=1, le=4096)]
Kernel = Annotated[int, Field(ge=1, le=15)]


class Conv2dLayer(Strict):
    kind: Literal["conv2d"] = "conv2d"
    out_channels: Size
    kernel_size: Kernel = 3
    stride: Annotated[int, Field(ge=1, le=8)] = 1
    padding: Annotated[int, Field(ge=0, le=16)] = 0
    in_channels: Size | None = None
    bias: bool = True


class BatchNorm2dLayer(Strict):
    kind: Literal["batchnorm2d"] = "batchnorm2d"
    num_features: Size | None = None


class BatchNorm1dLayer(Strict):
    """Batchnorm over a flat [features] input (after a flatten or linear layer)."""

    kind: Literal["batchnorm1d"] = "batchnorm1d"
    num_features: Size | None = None


class ReLULayer(Strict):
    kind: Literal["relu"] = "relu"


class LeakyReLULayer(Strict):
    kind: Literal["leaky_relu"] = "leaky_relu"
    negative_slope: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01


class GELULayer(Strict):
    kind: Literal["gelu"] = "gelu"


class SigmoidLayer(Strict):
    kind: Literal["sigmoid"] = "sigmoid"


class TanhLayer(Strict):
    kind: Literal["tanh"] = "tanh"


class MaxPool2dLayer(Strict):
    kind: Literal["maxpool2d"] = "maxpool2d"
    kernel_size: Kernel = 2
    stride: Annotated[int, Field(ge=1, le=15)] | None = None  # torch's default: the kernel size
    padding: Annotated[int, Field(ge=0, le=7)] = 0


class AvgPool2dLayer(Strict):
    kind: Literal["avgpool2d"] = "avgpool2d"
    kernel_size: Kernel = 2
    stride: Annotated[int, Field(ge=1, le=15)] | None = None
    padding: Annotated[int, Field(ge=0, le=7)] = 0


class AdaptiveAvgPool2dLayer(Strict):
    kind: Literal["adaptiveavgpool2d"] = "adaptiveavgpool2d"
    output_size: Annotated[int, Field(ge=1, le=64)] = 1


class DropoutLayer(Strict):
    kind: Literal["dropout"] = "dropout"
    p: Probability = 0.5


class FlattenLayer(Strict):
    kind: Literal["flatten"] = "flatten"


class LinearLayer(Strict):
    kind: Literal["linear"] = "linear"
    # Left out: as many outputs as the task has (the dataset's classes, or 1 for regression).
    out_features: Annotated[int, Field(ge=1, le=16384)] | None = None
    in_features: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    bias: bool = True


LayerSpec = Annotated[
    Conv2dLayer
    | BatchNorm2dLayer
    | BatchNorm1dLayer
    | ReLULayer
    | LeakyReLULayer
    | GELULayer
    | SigmoidLayer
    | TanhLayer
    | MaxPool2dLayer
    | AvgPool2dLayer
    | AdaptiveAvgPool2dLayer
    | DropoutLayer
    | FlattenLayer
    | LinearLayer,
    Field(discriminator="kind"),
]


class SequentialSpec(Strict):
    """A free list of layers, applied in order; `POST /experiments:validate` shows each one's output shape."""

    kind: Literal["sequential"] = "sequential"
    layers: Annotated[list[LayerSpec], Field(min_length=1, max_length=64)]
    init: Init = "default"
    pretrained: WarmStart = "none"


class PretrainedSpec(Strict):
    """A torchvision classifier for transfer learning. Its head is replaced by one sized to the dataset's
    classes; inputs are resized to `image_size` (grey images repeated to three channels) and, with ImageNet
    weights, standardised with ImageNet's statistics as those weights expect."""

    kind: Literal["resnet18", "mobilenet_v2"]
    pretrained: Literal["imagenet", "none"] | FromExperiment = "imagenet"
    # "backbone": train only the new head (the backbone's batchnorm statistics stay as loaded, too).
    freeze: Literal["backbone", "none"] = "none"
    image_size: Annotated[int, Field(ge=32, le=512)] = 224
    dropout: Probability = 0.0


ModelSpec = Annotated[LinearSpec | MLPSpec | CNNSpec | SequentialSpec | PretrainedSpec, Field(discriminator="kind")]
# Every `model.kind` a spec may name.
MODEL_KINDS: tuple[str, ...] = tuple(
    kind for spec in get_args(get_args(ModelSpec)[0]) for kind in get_args(spec.model_fields["kind"].annotation)
)
ModelKind = Literal[MODEL_KINDS]  # type: ignore[valid-type]

LearningRate = Annotated[float, Field(gt=0.0, le=10.0)]
WeightDecay = Annotated[float, Field(ge=0.0, le=1.0)]


class SGDSpec(Strict):
    kind: Literal["sgd"] = "sgd"
    lr: LearningRate = 0.01
    momentum: Probability = 0.9
    nesterov: bool = False
    weight_decay: WeightDecay = 0.0

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDSpec:
        if self.nesterov and self.momentum == 0:
            raise PydanticCustomError("nesterov_without_momentum", "nesterov requires momentum > 0")
        return self


class AdamSpec(Strict):
    kind: Literal["adam"] = "adam"
    lr: LearningRate = 1e-3
    weight_decay: WeightDecay = 0.0


class AdamWSpec(Strict):
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""

    kind: Literal["adamw"] = "adamw"
    lr: LearningRate = 1e-3
    weight_decay: WeightDecay = 0.01


class RMSpropSpec(Strict):
    kind: Literal["rmsprop"] = "rmsprop"
    lr: LearningRate = 1e-3
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    momentum: Probability = 0.0
    weight_decay: WeightDecay = 0.0


OptimizerSpec = Annotated[SGDSpec | AdamSpec | AdamWSpec | RMSpropSpec, Field(discriminator="kind")]

Monitor = Literal["val_loss", "val_accuracy", "val_mae", "val_rmse", "val_r2"]
# The metrics each task records (and may monitor); the others stay null.
TASK_METRICS = {
    "classification": ("val_loss", "val_accuracy"),
    "regression": ("val_loss", "val_mae", "val_rmse", "val_r2"),
}
EpochCount = Annotated[int, Field(ge=1, le=1000)]


class StepScheduleSpec(Strict):
    """Multiply the lr by `gamma` every `step_size` epochs."""

    kind: Literal["step"] = "step"
    step_size: EpochCount = 10
    gamma: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1


class CosineScheduleSpec(Strict):
    """Cosine annealing from the optimizer's lr down to `min_lr` over the run's epochs."""

    kind: Literal["cosine"] = "cosine"
    min_lr: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0


class OneCycleScheduleSpec(Strict):
    """Warm up to `max_lr` over `pct_start` of the run, then anneal; stepped every batch."""

    kind: Literal["onecycle"] = "onecycle"
    max_lr: LearningRate = 0.01
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3


class PlateauScheduleSpec(Strict):
    """Multiply the lr by `factor` once `monitor` has not improved for `patience` epochs."""

    kind: Literal["reduce_on_plateau"] = "reduce_on_plateau"
    monitor: Monitor = "val_loss"
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    patience: Annotated[int, Field(ge=0, le=1000)] = 2


SchedulerSpec = Annotated[
    StepScheduleSpec | CosineScheduleSpec | OneCycleScheduleSpec | PlateauScheduleSpec, Field(discriminator="kind")
]


class EarlyStoppingSpec(Strict):
    """Stop once `monitor` has not improved by more than `min_delta` for `patience` epochs."""

    monitor: Monitor = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"  # auto: min for losses, max for accuracies
    patience: EpochCount = 3
    min_delta: Annotated[float, Field(ge=0.0, le=1e6)] = 0.0


class CheckpointPolicy(Strict):
    """Which epochs' checkpoints to keep; the others are deleted when a new one is written."""

    keep_best: Annotated[int, Field(ge=0, le=1000)] = 1
    keep_last: Annotated[int, Field(ge=1, le=1000)] = 1


class HFlip(Strict):
    kind: Literal["hflip"] = "hflip"
    p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5


class VFlip(Strict):
    kind: Literal["vflip"] = "vflip"
    p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5


class Rotation(Strict):
    """Rotate each image by an angle drawn uniformly from [-degrees, degrees]."""

    kind: Literal["rotation"] = "rotation"
    degrees: Annotated[float, Field(gt=0.0, le=180.0)] = 15.0


class RandomCrop(Strict):
    """Pad by `padding` pixels (zeros) and crop back to the original size at a random offset."""

    kind: Literal["random_crop"] = "random_crop"
    padding: Annotated[int, Field(ge=1, le=64)] = 4


class GaussianNoise(Strict):
    """Add N(0, std^2) noise to pixel values in [0, 1], then clip."""

    kind: Literal["gaussian_noise"] = "gaussian_noise"
    std: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1


class ColorJitter(Strict):
    """Random brightness/contrast/saturation factors in [1 - x, 1 + x] and hue shift in [-hue, hue]."""

    kind: Literal["color_jitter"] = "color_jitter"
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    saturation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    hue: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0


class RandomErasing(Strict):
    """With probability `p`, blank a random rectangle covering `scale` of the image (fractions)."""

    kind: Literal["random_erasing"] = "random_erasing"
    p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    scale: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = (0.02, 0.2)

    @model_validator(mode="after")
    def _ordered(self) -> RandomErasing:
        if self.scale[0] > self.scale[1]:
            raise PydanticCustomError("unordered_range", "scale must be (low, high) with low <= high")
        return self


AugmentationSpec = Annotated[
    HFlip | VFlip | Rotation | RandomCrop | GaussianNoise | ColorJitter | RandomErasing, Field(discriminator="kind")
]


class CrossEntropyLoss(Strict):
    kind: Literal["cross_entropy"] = "cross_entropy"
    label_smoothing: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0


class NLLLoss(Strict):
    """Negative log-likelihood of log-softmax outputs: cross-entropy spelled as two steps, as in the tutorials."""

    kind: Literal["nll"] = "nll"


class MSELoss(Strict):
    """Mean squared error. Regression: of the (standardised) target. Classification: of the softmax probabilities
    against the one-hot label, summed over the classes (the Brier score), the loss to compare cross-entropy with:
    its gradient fades as the softmax saturates, on confident mistakes too, which cross-entropy's does not."""

    kind: Literal["mse"] = "mse"


class L1Loss(Strict):
    kind: Literal["l1"] = "l1"


class HuberLoss(Strict):
    kind: Literal["huber"] = "huber"
    delta: Annotated[float, Field(gt=0.0, le=1e3)] = 1.0


LossSpec = Annotated[CrossEntropyLoss | NLLLoss | MSELoss | L1Loss | HuberLoss, Field(discriminator="kind")]
# Each task's losses, its default first.
TASK_LOSSES = {"classification": ("cross_entropy", "nll", "mse"), "regression": ("mse", "l1", "huber")}


def _with_kind(value: Any, kind: str) -> Any:
    """A section given without its `kind` gets `kind`; anything else is left for validation to judge."""
    return {"kind": kind, **value} if isinstance(value, dict) and "kind" not in value else value


class ExperimentSpec(Strict):
    """One training run. Every field but `dataset` and `model` has a default; responses show them all filled in."""

    name: Name = "experiment"
    # Must match the dataset's task; regression learns the dataset's standardised target.
    task: Literal["classification", "regression"] = "classification"
    dataset: DatasetSpec
    model: ModelSpec
    # Defaults by task: cross_entropy for classification, mse for regression (null, or no `kind`, gives it).
    loss: Annotated[LossSpec | None, Field(validate_default=True)] = None
    optimizer: OptimizerSpec = AdamSpec()
    scheduler: SchedulerSpec | None = None
    grad_clip_norm: Annotated[float, Field(gt=0.0, le=1e4)] | None = None
    # Applied in order, to training batches only.
    augment: Annotated[list[AugmentationSpec], Field(max_length=16)] = []
    batch_size: Annotated[int, Field(ge=1, le=8192)] = 64
    epochs: EpochCount = 5
    early_stopping: EarlyStoppingSpec | None = None
    checkpoints: CheckpointPolicy = CheckpointPolicy()
    seed: Seed = 0
    # Deterministic kernels: the same spec and seed give the same metrics on the same device.
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Training arithmetic. "auto": bf16 autocast where the device computes bf16 natively (Ampere+ GPUs, CPUs with
    # AVX-512 BF16 or AMX), else fp32. Evaluation and /predict are always fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the model (inductor) before the first epoch, for every batch shape the run uses: seconds of
    # compiling (recorded as that epoch's compile_s, outside its samples/s), then fused kernels. It pays off for
    # long runs on a GPU; on a CPU the default CNN measured slower than eager (docs/PERFORMANCE.md).
    compile: bool = False

    # A section with a default kind may leave `kind` out: {"optimizer": {"lr": 0.01}} is Adam at 0.01, and
    # {"loss": {"label_smoothing": 0.1}} the task's default loss (each kind's other fields are still checked).
    @field_validator("optimizer", mode="before")
    @classmethod
    def _default_optimizer_kind(cls, value: Any) -> Any:
        return _with_kind(value, AdamSpec().kind)

    @field_validator("loss", mode="before")
    @classmethod
    def _default_loss_kind(cls, value: Any, info: ValidationInfo) -> Any:
        task = info.data.get("task")
        if task not in TASK_LOSSES:  # the task's own error says why
            return value
        return _with_kind({} if value is None else value, TASK_LOSSES[task][0])

    # Cross-field checks as field validators, so that an error's `loc` names the field (`task` is declared, and so
    # validated, before them; when it failed there is nothing to check against).
    @field_validator("loss")
    @classmethod
    def _loss_fits_the_task(cls, loss: LossSpec | None, info: ValidationInfo) -> LossSpec | None:
        task = info.data.get("task")
        if loss is not None and task is not None and loss.kind not in TASK_LOSSES[task]:
            raise PydanticCustomError(
                "task_mismatch",
                "loss '{kind}' is not a {task} loss; use one of {allowed}",
                {"kind": loss.kind, "task": task, "allowed": ", ".join(TASK_LOSSES[task])},
            )
        return loss

    @field_validator("scheduler", "early_stopping")
    @classmethod
    def _monitor_is_recorded(cls, part: BaseModel | None, info: ValidationInfo) -> BaseModel | None:
        task, monitor = info.data.get("task"), getattr(part, "monitor", None)
        if monitor is not None and task is not None and monitor not in TASK_METRICS[task]:
            raise PydanticCustomError(
                "task_mismatch",
                "monitor '{monitor}' is not recorded for {task}; use one of {allowed}",
                {"monitor": monitor, "task": task, "allowed": ", ".join(TASK_METRICS[task])},
            )
        return part


class EpochMetrics(BaseModel):
    """What the worker records after each finished epoch: one row per (experiment, epoch)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int
    train_loss: float
    # The training loss within the epoch: its mean over each twentieth of the epoch's batches (each batch, where
    # there are fewer), in order. Null in rows recorded before it existed.
    train_loss_curve: list[float] | None = None
    val_loss: float
    # Classification.
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    # Regression, in the target's units (the loss is in standardised units).
    train_mae: float | None = None
    val_mae: float | None = None
    val_rmse: float | None = None
    val_r2: float | None = None
    lr: float
    duration_s: float
    samples_per_s: float
    # Training examples in the epoch (rows recorded before this field existed have null).
    train_samples: int | None = None
    # Seconds torch.compile took before this epoch (`compile: true`; the first epoch each worker trains).
    compile_s: float | None = None
