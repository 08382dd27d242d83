"""The training engine: plain train/evaluate loops over in-memory uint8 tensors, one checkpoint per epoch.

Batches are index slices of tensors that live on the training device (no DataLoader, no per-sample decode);
the forward pass runs under the spec's precision (bf16 autocast where the device has it) and conv nets in
channels-last layout; metrics accumulate on the device and are read once per epoch. On a GPU, full batches
replay a CUDA graph of the training step (worker.steps).
Each epoch reseeds from (spec.seed, epoch), so a run resumed from epoch k's checkpoint replays the same
shuffles and dropout masks as one that was never interrupted.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from service.specs import EarlyStoppingSpec, EpochMetrics, ExperimentSpec
from worker.augment import Augmentation, build_augmentation
from worker.checkpoints import CheckpointContent, dump_checkpoint
from worker.datasets import Dataset, Split
from worker.models import TransferNet, create_model, input_preprocess
from worker.numerics import Numerics, eval_batch_size, resolve_numerics
from worker.objectives import Objective
from worker.preprocess import Preprocess, normalize, standardize, to_unit, with_training_range
from worker.pretrained import load_matching
from worker.steps import TrainStep, graph_blocker

log = logging.getLogger(__name__)

OnEpoch = Callable[[EpochMetrics, bytes], None]
ShouldStop = Callable[[], bool]
# (batches done, batches in the epoch, running mean loss): called at most every `progress_every_s`.
OnBatches = Callable[[int, int, float], None]
# (batches done, batches in all) while a frozen backbone's features are computed.
OnChunks = Callable[[int, int], None]


class Interrupted(Exception):
    """Training stopped at a batch boundary because `should_stop()` said so. From `fit`, `checkpoint` holds the
    state to finish the interrupted epoch from that batch exactly as an uninterrupted run would."""

    def __init__(
        self, progress: EpochProgress | None = None, checkpoint: bytes | None = None, epoch: int | None = None
    ) -> None:
        super().__init__("training interrupted at a batch boundary")
        self.progress, self.checkpoint, self.epoch = progress, checkpoint, epoch


@dataclass(frozen=True)
class EpochProgress:
    """How far an epoch got: batches done, the running sums of its training loss and metrics, and the loss sum at
    each of `curve_marks` passed."""

    batches: int = 0
    loss_sum: float = 0.0
    sums: tuple[float, ...] = ()
    marks: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> EpochProgress:
        sums = data.get("sums", (data["correct"],) if "correct" in data else ())  # checkpoints before regression
        return cls(data["batches"], data["loss_sum"], tuple(sums), tuple(data.get("marks", ())))


# The training loss within an epoch: its mean over each twentieth of the epoch's batches, so that a run of a few
# epochs still has a learning curve (the loss sum so far copied on the device, read with the epoch's other sums).
CURVE_POINTS = 20


def curve_marks(batches: int) -> list[int]:
    """The numbers of batches done at which an epoch of `batches` notes its loss sum: the ends of CURVE_POINTS
    equal parts (of every batch, where there are fewer)."""
    parts = min(CURVE_POINTS, batches)
    return [round(k * batches / parts) for k in range(1, parts + 1)]


@dataclass(frozen=True)
class EpochTraining:
    """What an epoch of training gives: its mean loss, the task's train metrics and the loss curve within it (the
    mean loss of each part between `curve_marks`; None for an epoch resumed from a checkpoint written before
    curves were)."""

    loss: float
    metrics: dict[str, float]
    curve: list[float] | None


class TrainingDiverged(ArithmeticError):
    """The loss became NaN or infinite: no epoch after that can mean anything."""


class CompileFailed(RuntimeError):
    """`compile: true`, but torch.compile could not compile the model on this worker."""


_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    # fused: one kernel per step over every parameter, instead of a pass per arithmetic operation (on the CPU
    # too: Adam's step over the default CNN's 420k parameters takes 0.25 ms instead of 0.57 ms).
    "sgd": lambda spec, params: torch.optim.SGD(
        params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay, fused=True
    ),
    "adam": lambda spec, params: torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=True),
    "adamw": lambda spec, params: torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=True),
    "rmsprop": lambda spec, params: torch.optim.RMSprop(
        params, lr=spec.lr, alpha=spec.alpha, momentum=spec.momentum, weight_decay=spec.weight_decay
    ),
}


def build_optimizer(spec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Over the parameters that train (a frozen backbone's do not)."""
    return _OPTIMIZERS[spec.kind](spec, [p for p in params if p.requires_grad])


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """ "min" or "max": losses and errors should fall, accuracy and R² rise."""
    if mode != "auto":
        return mode
    return "max" if monitor.endswith(("accuracy", "r2")) else "min"


class Schedule:
    """An lr scheduler and when to step it: after every batch (one-cycle) or after every epoch."""

    def __init__(self, scheduler, *, per_batch: bool = False, monitor: str | None = None) -> None:
        self.scheduler, self.per_batch, self.monitor = scheduler, per_batch, monitor

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, metrics: EpochMetrics) -> None:
        if self.monitor is not None:
            self.scheduler.step(getattr(metrics, self.monitor))
        elif not self.per_batch:
            self.scheduler.step()


_SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "step": lambda spec, opt, epochs, steps: Schedule(torch.optim.lr_scheduler.StepLR(opt, spec.step_size, spec.gamma)),
    "cosine": lambda spec, opt, epochs, steps: Schedule(
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=spec.min_lr)
    ),
    "onecycle": lambda spec, opt, epochs, steps: Schedule(
        # The optimizer's own momentum is left as the spec says.
        torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=spec.max_lr, total_steps=epochs * steps, pct_start=spec.pct_start, cycle_momentum=False
        ),
        per_batch=True,
    ),
    "reduce_on_plateau": lambda spec, opt, epochs, steps: Schedule(
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode=monitor_mode(spec.monitor), factor=spec.factor, patience=spec.patience
        ),
        monitor=spec.monitor,
    ),
}


def build_schedule(spec, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int) -> Schedule | None:
    return None if spec is None else _SCHEDULES[spec.kind](spec, optimizer, epochs, steps_per_epoch)


class EarlyStopping:
    def __init__(self, spec: EarlyStoppingSpec) -> None:
        self.spec = spec
        self.mode = monitor_mode(spec.monitor, spec.mode)
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.reason: str | None = None  # set once the run should stop

    def update(self, metrics: EpochMetrics) -> str | None:
        """Record an epoch; the reason to stop, or None to go on."""
        value = getattr(metrics, self.spec.monitor)
        delta = self.spec.min_delta
        if self.best is None or (value < self.best - delta if self.mode == "min" else value > self.best + delta):
            self.best, self.best_epoch, self.bad_epochs = value, metrics.epoch, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.spec.patience:
            self.reason = (
                f"early stopping after epoch {metrics.epoch}: {self.spec.monitor} has not improved for "
                f"{self.bad_epochs} epochs (best {self.best:.4g} at epoch {self.best_epoch})"
            )
        return self.reason

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.reason = state["reason"]


@dataclass(frozen=True)
class FitResult:
    last_epoch: int
    stop_reason: str | None  # set when early stopping ended the run before spec.epochs


def runtime_environment(device: torch.device) -> dict[str, str]:
    """What produced the numbers: recorded with every experiment."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "torch": torch.__version__,
        # From the package metadata: importing torchvision costs every worker a second (it pulls in torch._dynamo).
        "torchvision": importlib.metadata.version("torchvision"),
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "host": platform.node(),
    }


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the spec asks for device 'cuda' but this worker has no CUDA device; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % 2**63


@dataclass(frozen=True)
class DeviceSplit:
    images: torch.Tensor  # uint8 images; or, for head-only training, the features a frozen backbone made of them
    labels: torch.Tensor
    # The images as the model sees them, computed once when no augmentation comes between (saves a few
    # small kernels per batch, which is what bounds small models on a GPU, and redoing it every evaluation).
    standardized: torch.Tensor | None = None

    @classmethod
    def of(cls, split: Split, device: torch.device, preprocess: Preprocess | None = None) -> DeviceSplit:
        images = split.images.to(device)
        return cls(images, split.labels.to(device), normalize(images, preprocess) if preprocess else None)

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, batch: slice, preprocess: Preprocess) -> torch.Tensor:
        """The model's (unaugmented) float inputs for `batch`."""
        return self.standardized[batch] if self.standardized is not None else normalize(self.images[batch], preprocess)


@torch.no_grad()
def frozen_features(
    net: TransferNet, splits: Sequence[DeviceSplit], preprocess: Preprocess, numerics: Numerics, *, chunk: int,
    should_stop: ShouldStop, on_chunks: OnChunks | None = None, progress_every_s: float = 1.0,
) -> list[DeviceSplit]:  # fmt: skip
    """Each split as the head of `net` sees it: its images through the frozen backbone (in eval mode, fp32, as
    evaluation runs it), in chunks of `chunk` images in index order, so that every process computes the same
    features (a resumed run replays an uninterrupted one). Raises Interrupted between chunks on `should_stop()`."""
    net.backbone.eval()
    chunks, done = sum(-(-len(data) // chunk) for data in splits), 0
    report_at = time.monotonic() + progress_every_s
    out = []
    for data in splits:
        parts = []
        for start in range(0, len(data), chunk):
            if on_chunks is not None and time.monotonic() >= report_at:
                on_chunks(done, chunks)
                report_at = time.monotonic() + progress_every_s
            if should_stop():
                raise Interrupted()
            parts.append(net.features(numerics.layout(data.inputs(slice(start, start + chunk), preprocess))))
            done += 1
        features = torch.cat(parts)
        out.append(DeviceSplit(features, data.labels, features))
    return out


def train_one_epoch(
    step: TrainStep,
    data: DeviceSplit,
    preprocess: Preprocess,
    *,
    generator: torch.Generator,
    augment: Augmentation | None = None,
    schedule: Schedule | None = None,
    should_stop: ShouldStop = lambda: False,
    done: EpochProgress = EpochProgress(),
    on_batches: OnBatches | None = None,
    progress_every_s: float = 1.0,
) -> EpochTraining:
    """One pass over `data` in a seeded random order, in batches of `step.batch_size`, skipping the batches already
    `done` (a resumed epoch). Raises Interrupted, with the progress so far, when `should_stop()`."""
    step.model.train()
    n, batch_size = len(data), step.batch_size
    device = data.labels.device
    # Drawn on the CPU so the order does not depend on the device.
    order = torch.randperm(n, generator=generator).to(device)
    step.reset(done.loss_sum, done.sums)
    batches = training_batches(n, batch_size)
    marks = curve_marks(len(batches))
    marked = torch.zeros(len(marks), dtype=step.loss_sum.dtype, device=device)  # the loss sum at each mark passed
    passed = len(done.marks)
    marked[:passed] = torch.tensor(done.marks, dtype=marked.dtype)
    report_at = time.monotonic() + progress_every_s
    for batch in range(done.batches, len(batches)):
        if on_batches is not None and time.monotonic() >= report_at:
            # One device sync per interval, for the running loss.
            on_batches(batch, len(batches), step.loss_sum.item() / max(batches[batch].start, 1))
            report_at = time.monotonic() + progress_every_s
        if should_stop():
            so_far = tuple(marked[:passed].tolist())
            raise Interrupted(EpochProgress(batch, step.loss_sum.item(), tuple(step.sums.tolist()), so_far))
        idx = order[batches[batch]]
        if augment is None and data.standardized is not None:
            inputs = data.standardized[idx]
        else:
            inputs = to_unit(data.images[idx])
            if augment is not None:
                inputs = augment(inputs)
            inputs = standardize(inputs, preprocess)
        step(inputs, data.labels[idx])
        if schedule is not None:
            schedule.after_batch()
        if passed < len(marks) and batch + 1 == marks[passed]:
            marked[passed] = step.loss_sum  # a copy on the device: no sync
            passed += 1
    curve = None
    if passed == len(marks):  # else resumed from a checkpoint that kept no marks
        ends = [0, *(batches[mark - 1].stop for mark in marks)]
        sums = [0.0, *marked.tolist()]
        curve = [(sums[i + 1] - sums[i]) / (ends[i + 1] - ends[i]) for i in range(len(marks))]
    return EpochTraining(step.loss_sum.item() / n, step.objective.metrics(step.sums.tolist(), n, "train"), curve)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: DeviceSplit,
    preprocess: Preprocess,
    objective: Objective,
    numerics: Numerics | None = None,
) -> tuple[float, dict[str, float]]:
    """Mean loss and the task's validation metrics over `data`, in eval mode. Always fp32, as /predict is: the
    recorded validation accuracy is the one the served model has, whatever precision trained it."""
    model.eval()
    layout = numerics.layout if numerics is not None else (lambda x: x)
    device = data.labels.device
    loss_sum = torch.zeros((), device=device)
    sums = torch.zeros(objective.size(), dtype=torch.float64, device=device)
    size = eval_batch_size(device)
    for start in range(0, len(data), size):
        batch = slice(start, start + size)
        inputs = layout(data.inputs(batch, preprocess))
        targets = data.labels[batch]
        outputs = model(inputs)
        loss_sum += objective.loss(outputs, targets, reduction="sum")
        sums += objective.tally(outputs, targets)
    return loss_sum.item() / len(data), objective.metrics(sums.tolist(), len(data), "val")


def training_batches(n: int, size: int) -> list[slice]:
    """The batches that cut `n` training samples into batches of `size`, except that a last batch of one sample
    joins the one before: batchnorm cannot normalise one value per channel in training (PyTorch raises), and a
    step on a single sample is mostly noise."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, stop) for start, stop in zip(starts, [*starts[1:], n], strict=True)]


def _batch_sizes(n: int, size: int) -> set[int]:
    """The sizes of the batches that cut `n` samples into batches of `size`."""
    return {min(n, size)} | ({n % size} if n > size and n % size else set())


def compile_model(
    model: nn.Module,
    train: DeviceSplit,
    val: DeviceSplit,
    preprocess: Preprocess,
    objective: Objective,
    numerics: Numerics,
    batch_size: int,
) -> tuple[nn.Module, float]:
    """`model` compiled by torch.compile, run once for every batch shape training and evaluation will use, in
    train mode with a backward pass and in eval mode under inference_mode, so that compiling is timed on its own
    instead of inflating the first epoch; and the seconds that took. Static shapes: a graph per batch size, never
    a slower dynamic one. The warm-up's gradients and batch-norm statistics are discarded.

    The compiled wrapper shares `model`'s parameters; train and evaluate through it, save `model` (the wrapper's
    state-dict keys gain a prefix). Not `model.compile()` in place: under torch 2.11 that compiles nothing for an
    `nn.Sequential` (dynamo skips `Module._call_impl` as torch's own code) and trains eagerly without a word."""
    started = time.perf_counter()
    # Each run compiles afresh: dynamo keeps a few graphs per code object (every Sequential shares one) and, in a
    # long-lived worker, would silently fall back to eager once they were used up by earlier runs.
    torch.compiler.reset()
    compiled = torch.compile(model, dynamic=False)
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    try:
        compiled.train()
        for n in {batch.stop - batch.start for batch in training_batches(len(train), batch_size)}:
            with numerics.autocast():
                outputs = compiled(numerics.layout(train.inputs(slice(0, n), preprocess)))
                loss = objective.loss(outputs, train.labels[:n])
            loss.backward()
        with torch.inference_mode():
            compiled.eval()
            for n in _batch_sizes(len(val), eval_batch_size(val.labels.device)):
                compiled(numerics.layout(val.inputs(slice(0, n), preprocess)))
    except torch._dynamo.exc.BackendCompilerFailed as exc:  # e.g. no C++ compiler for inductor on a CPU
        reason = str(exc).strip().splitlines()[0]
        raise CompileFailed(
            f"torch.compile failed on {val.labels.device.type}: {reason}. Set compile: false (same training, "
            "eager kernels), or give the worker what is missing"
        ) from None
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    if val.labels.device.type == "cuda":
        torch.cuda.synchronize(val.labels.device)
    return compiled, time.perf_counter() - started


class ProgressReport:
    """`fit`'s progress events: a training epoch's batches (running loss, samples/s, the epoch's and the run's
    ETA), or the batches of a frozen backbone's features (`"stage": "features"`, with their ETA). Rates count from
    when a callback is made, so that computing the features does not inflate the training's ETA."""

    def __init__(self, send: Callable[[dict], None], epochs: int, batch_size: int) -> None:
        self.send, self.epochs, self.batch_size = send, epochs, batch_size

    def batches(self, epoch: int, first: int) -> OnBatches:
        """For an epoch that starts at batch `first` (a resumed one: later than 0)."""
        since = time.perf_counter()

        def report(batch: int, batches: int, loss: float) -> None:
            per_s = (batch - first) / (time.perf_counter() - since)
            eta_epoch = (batches - batch) / per_s if per_s else None
            self.send({
                "epoch": epoch, "epochs": self.epochs, "batch": batch, "batches": batches, "loss": loss,
                "samples_per_s": per_s * self.batch_size, "eta_epoch_s": eta_epoch,
                "eta_run_s": None if eta_epoch is None else eta_epoch + (self.epochs - epoch) * batches / per_s,
            })  # fmt: skip

        return report

    def features(self, epoch: int) -> OnChunks:
        since = time.perf_counter()

        def report(batch: int, batches: int) -> None:
            per_s = batch / (time.perf_counter() - since)
            self.send({
                "epoch": epoch, "epochs": self.epochs, "stage": "features", "batch": batch, "batches": batches,
                "samples_per_s": per_s * self.batch_size, "eta_s": (batches - batch) / per_s if per_s else None,
            })  # fmt: skip

        return report


def fit(
    spec: ExperimentSpec,
    dataset: Dataset,
    device: torch.device,
    *,
    on_epoch: OnEpoch,
    resume: CheckpointContent | None = None,
    initial_weights: dict[str, torch.Tensor] | None = None,
    should_stop: ShouldStop = lambda: False,
    on_progress: Callable[[dict], None] | None = None,
    progress_every_s: float = 1.0,
    cuda_graphs: bool = True,
    feature_cache: bool = True,
) -> FitResult:
    """Train epochs (resume.epoch + 1 or 1) .. spec.epochs; after each, evaluate and hand over metrics and a
    checkpoint to `on_epoch`. A fresh run starts from `initial_weights` (pretrained; the tensors whose names and
    shapes fit). Stops early when the spec's early stopping says so; raises Interrupted when `should_stop()`
    turns true. `on_progress` gets, every `progress_every_s` inside an epoch, its batches done, running loss,
    samples/s and the estimated seconds left of the epoch and of the run (ProgressReport). On CUDA, training steps
    replay a CUDA graph where the step allows it (worker.steps); `cuda_graphs=False` runs them eagerly, for
    comparison. A frozen backbone's features are computed once (see below); `feature_cache=False` runs it every
    epoch, for comparison."""
    info = dataset.info
    preprocess = input_preprocess(spec.model, info.preprocess)
    # Kept in the checkpoints: /predict names inputs unlike every training example.
    preprocess = with_training_range(preprocess, dataset.train.images)
    objective = Objective.of(spec.task, spec.loss, preprocess)
    torch.use_deterministic_algorithms(spec.deterministic, warn_only=True)
    # Deterministic mode would also fill every new tensor with NaN, to expose reads of memory that nothing wrote:
    # 54 fills a step and ~4% of the default CNN's samples/s on a CPU (A/B, 6 rounds), for kernels that write
    # every element they return (the seeded-run and resume tests replay runs exactly without it).
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = not spec.deterministic
    torch.manual_seed(spec.seed)
    model = create_model(spec.model, preprocess.input_shape, info.num_classes)
    if initial_weights is not None and resume is None:
        load_matching(model, initial_weights)
    numerics = resolve_numerics(spec.precision, device, model)
    model = numerics.place(model, device)
    scaler = numerics.scaler()
    optimizer = build_optimizer(spec.optimizer, model.parameters())
    steps_per_epoch = len(training_batches(len(dataset.train), spec.batch_size))
    schedule = build_schedule(spec.scheduler, optimizer, epochs=spec.epochs, steps_per_epoch=steps_per_epoch)
    stopper = EarlyStopping(spec.early_stopping) if spec.early_stopping is not None else None
    augment = build_augmentation(spec.augment)
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        if schedule is not None:
            schedule.scheduler.load_state_dict(resume.trainer_state["scheduler"])
        if resume.trainer_state.get("scaler"):
            scaler.load_state_dict(resume.trainer_state["scaler"])
        if stopper is not None:
            stopper.load_state_dict(resume.trainer_state["early_stopping"])
            if stopper.reason is not None:  # the run had already stopped when that checkpoint was written
                return FitResult(resume.epoch, stopper.reason)
        first_epoch = resume.epoch + 1
    # A checkpoint written when training was interrupted inside `first_epoch`: finish that epoch from there.
    interrupted = resume.trainer_state.get("interrupted") if resume is not None else None

    def trainer_state() -> dict:
        return {
            "scheduler": schedule.scheduler.state_dict() if schedule is not None else None,
            "early_stopping": stopper.state_dict() if stopper is not None else None,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        }

    def checkpoint(epoch: int, **extra: object) -> bytes:
        return dump_checkpoint(
            epoch=epoch,
            spec=spec,
            preprocess=preprocess,
            class_names=info.class_names,
            model=model,
            optimizer=optimizer,
            trainer_state={**trainer_state(), **extra},
        )

    # A frozen backbone maps an image to the same features every epoch. The validation images' are computed once,
    # when this process starts its first epoch, and evaluation runs the head alone on them; so are the training
    # images' when no augmentation changes them, and then only the head trains: an epoch after the first costs the
    # head's work, not the backbone's forward passes.
    frozen = model if feature_cache and isinstance(model, TransferNet) and model.frozen else None
    # Images read once (into the backbone) are standardised batch by batch: a whole split's float copy would be
    # four times its uint8 images in memory.
    standardized_once = preprocess if frozen is None else None
    train = DeviceSplit.of(dataset.train, device, standardized_once if augment is None else None)
    val = DeviceSplit.of(dataset.val, device, standardized_once)
    head_only = frozen is not None and augment is None
    head_numerics = resolve_numerics(spec.precision, device, frozen.head) if frozen is not None else numerics
    runner, compile_s = model, None  # what trains; checkpoints save `model`
    if head_only:
        runner = frozen.head  # compile: true would have nothing to compile (the API warns of that)
    elif spec.compile:
        runner, compile_s = compile_model(model, train, val, preprocess, objective, numerics, spec.batch_size)
    step_numerics = head_numerics if head_only else numerics
    evaluator = frozen.head if frozen is not None else runner
    blocker = graph_blocker(
        device, optimizer, scaler, per_batch_lr=schedule is not None and schedule.per_batch,
        compiled=compile_s is not None,
    )  # fmt: skip
    if device.type == "cuda" and cuda_graphs and blocker is not None:
        log.info("training without CUDA graphs: %s", blocker)
    step = TrainStep(
        runner, optimizer, objective, step_numerics, scaler, device=device, batch_size=spec.batch_size,
        grad_clip_norm=spec.grad_clip_norm, graphs=cuda_graphs and blocker is None,
    )  # fmt: skip
    progress = ProgressReport(on_progress, spec.epochs, spec.batch_size) if on_progress is not None else None
    for epoch in range(first_epoch, spec.epochs + 1):
        seed = epoch_seed(spec.seed, epoch)
        done, lr = EpochProgress(), optimizer.param_groups[0]["lr"]
        if interrupted is not None and epoch == first_epoch:
            done = EpochProgress.from_dict(interrupted["progress"])
            lr = interrupted["lr"]  # the epoch's lr is the one it started with
            _set_rng_state(interrupted["rng"], device)  # dropout and augmentation go on as they would have
        else:
            torch.manual_seed(seed)
        started = time.perf_counter()
        try:
            if frozen is not None and epoch == first_epoch:  # inside the epoch: its time counts, a stop is heard
                extracted = frozen_features(
                    frozen, (train, val) if head_only else (val,), preprocess, numerics, chunk=spec.batch_size,
                    should_stop=should_stop, on_chunks=progress.features(epoch) if progress else None,
                    progress_every_s=progress_every_s,
                )  # fmt: skip
                train, val = extracted if head_only else (train, *extracted)
            trained = train_one_epoch(
                step,
                train,
                preprocess,
                generator=torch.Generator().manual_seed(seed),
                augment=augment,
                schedule=schedule,
                should_stop=should_stop,
                done=done,
                on_batches=progress.batches(epoch, done.batches) if progress else None,
                progress_every_s=progress_every_s,
            )
        except Interrupted as stop:
            so_far = stop.progress or done  # none: stopped before a batch of this epoch trained
            state = {"progress": asdict(so_far), "epoch": epoch, "lr": lr, "rng": _rng_state(device)}
            raise Interrupted(so_far, checkpoint(epoch - 1, interrupted=state), epoch) from None
        train_seconds = time.perf_counter() - started
        val_loss, val_metrics = evaluate(evaluator, val, preprocess, objective, head_numerics)
        if not (math.isfinite(trained.loss) and math.isfinite(val_loss)):
            raise TrainingDiverged(
                f"the loss became {trained.loss if not math.isfinite(trained.loss) else val_loss} in epoch {epoch} "
                f"(lr {lr:g}): lower optimizer.lr, or set grad_clip_norm"
            )
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=trained.loss,
            train_loss_curve=trained.curve,
            val_loss=val_loss,
            **trained.metrics,
            **val_metrics,
            lr=lr,
            duration_s=time.perf_counter() - started,
            samples_per_s=(len(train) - done.batches * spec.batch_size) / train_seconds,
            train_samples=len(train),
            compile_s=compile_s if epoch == first_epoch else None,
        )
        if schedule is not None:
            schedule.after_epoch(metrics)
        stop_reason = stopper.update(metrics) if stopper is not None else None
        on_epoch(metrics, checkpoint(epoch))
        if stop_reason is not None:
            return FitResult(epoch, stop_reason)
    return FitResult(spec.epochs, None)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators training draws from (dropout, augmentation): torch's CPU one and the device's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
