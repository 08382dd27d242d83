"""The training engine on real data: resumption replays an uninterrupted run, and /predict's
preprocessing is the training preprocessing."""

from __future__ import annotations

import io
import itertools
import logging
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from service.specs import DatasetSpec, EpochMetrics, ExperimentSpec
from tests.conftest import fit_bundled, load_bundled, malicious_checkpoint, timing_free
from worker.checkpoints import UnreadableCheckpoint, load_checkpoint
from worker.datasets import dataset_names, load_dataset, stratified_split
from worker.engine import CompileFailed, Interrupted, compile_model, curve_marks, fit, training_batches
from worker.evaluation import Evaluation
from worker.inference import Predictor
from worker.models import ACTIVATIONS, create_model
from worker.preprocess import image_to_uint8, normalize
from worker.pretrained import load_matching, unfit

CPU = torch.device("cpu")


def spec(**overrides) -> ExperimentSpec:
    base = {"dataset": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [64], "dropout": 0.2}, "epochs": 3}
    return ExperimentSpec.model_validate({**base, **overrides})


@pytest.mark.parametrize("optimizer", [{"kind": "adam"}, {"kind": "sgd", "lr": 0.05, "nesterov": True}])
def test_resuming_from_a_checkpoint_replays_the_uninterrupted_run(optimizer) -> None:
    experiment = spec(optimizer=optimizer)
    whole = fit_bundled(experiment)
    assert [m.epoch for m, _ in whole] == [1, 2, 3]
    resumed = fit_bundled(experiment, resume=load_checkpoint(whole[0][1]))
    assert [timing_free(m) for m, _ in resumed] == [timing_free(m) for m, _ in whole[1:]]


def test_a_run_starts_from_an_earlier_runs_weights_where_they_fit() -> None:
    (last, checkpoint) = fit_bundled(spec(epochs=3, optimizer={"kind": "adam", "lr": 0.003}))[-1]
    slow = {"epochs": 1, "optimizer": {"kind": "adam", "lr": 1e-5}}  # too slow to learn much in one epoch
    [(warm, _)] = fit_bundled(spec(**slow), initial_weights=load_checkpoint(checkpoint).model_state)
    [(cold, _)] = fit_bundled(spec(**slow))
    assert warm.val_accuracy >= last.val_accuracy - 0.02 > cold.val_accuracy + 0.3, (last, warm, cold)

    # Weights for other classes fit all but the output layer, which starts anew; other widths are named.
    shape = (1, 8, 8)
    ten, two = ({k: v.shape for k, v in create_model(spec().model, shape, n).state_dict().items()} for n in (10, 2))
    assert unfit(create_model(spec().model, shape, 2), ten) == []
    wider = create_model(spec(model={"kind": "mlp", "hidden": [128]}).model, shape, 10)
    assert unfit(wider, two) == ["1.weight is 64x64 there, 128x64 here", "1.bias is 64 there, 128 here"]
    with pytest.raises(ValueError, match="do not fit this model: 1.weight is 64x64 there, 128x64 here"):
        load_matching(wider, create_model(spec().model, shape, 2).state_dict())


def test_stop_request_interrupts_at_a_batch_boundary() -> None:
    calls = []

    def stop_after_three_batches() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Interrupted):
        fit_bundled(spec(), should_stop=stop_after_three_batches)
    assert len(calls) == 4


def test_an_epoch_interrupted_mid_way_finishes_as_if_it_never_stopped() -> None:
    # Dropout, noise and a per-batch schedule all draw or step inside the epoch.
    experiment = spec(
        augment=[{"kind": "gaussian_noise", "std": 0.05}],
        scheduler={"kind": "onecycle", "max_lr": 0.01},
    )
    whole = fit_bundled(experiment)
    batches_per_epoch = -(-len(load_bundled(experiment.dataset).train) // experiment.batch_size)
    calls = []
    with pytest.raises(Interrupted) as stopped:  # 7 batches into epoch 2
        fit_bundled(experiment, should_stop=lambda: calls.append(1) or len(calls) > batches_per_epoch + 7)
    assert (stopped.value.epoch, stopped.value.progress.batches) == (2, 7)
    resumed = fit_bundled(experiment, resume=load_checkpoint(stopped.value.checkpoint))
    assert [timing_free(m) for m, _ in resumed] == [timing_free(m) for m, _ in whole[1:]]
    # From a checkpoint written before loss curves: the resumed epoch has none, the ones after it theirs.
    old = load_checkpoint(stopped.value.checkpoint)
    del old.trainer_state["interrupted"]["progress"]["marks"]
    resumed = [m for m, _ in fit_bundled(experiment, resume=old)]
    assert [m.train_loss_curve for m in resumed] == [None, whole[2][0].train_loss_curve]
    assert [m.train_loss for m in resumed] == [m.train_loss for m, _ in whole[1:]]


@pytest.mark.parametrize(("batch_size", "points"), [(64, 20), (479, 3)])
def test_each_epoch_keeps_its_loss_curve_whose_parts_average_to_the_epoch_s_loss(batch_size: int, points: int):
    """Twenty points an epoch (digits' 1,438 training images in 23 batches of 64), each the mean loss over a
    twentieth of the batches, or one a batch where there are fewer (3 of 479); weighted by their examples, they
    make the epoch's mean loss. The first epoch's curve falls as the model learns."""
    experiment = spec(batch_size=batch_size, epochs=2)
    batches = training_batches(1438, batch_size)
    ends = [0, *(batches[mark - 1].stop for mark in curve_marks(len(batches)))]
    for metrics, _ in fit_bundled(experiment):
        curve = metrics.train_loss_curve
        assert len(curve) == points, curve
        sizes = [b - a for a, b in itertools.pairwise(ends)]
        assert sum(c * size for c, size in zip(curve, sizes, strict=True)) / 1438 == pytest.approx(metrics.train_loss)
        if metrics.epoch == 1:
            assert curve[0] > curve[-1], curve


def test_a_last_batch_of_one_sample_joins_the_one_before() -> None:
    # 1,438 training digits in batches of 479 leave one over: batchnorm on the 1x1 map of a fourth conv block
    # cannot train on a batch of one (PyTorch raises), and onecycle's schedule counts the steps an epoch takes.
    experiment = spec(
        model={"kind": "cnn", "channels": [8, 8, 8, 8], "batchnorm": True}, batch_size=479, epochs=2,
        scheduler={"kind": "onecycle", "max_lr": 0.01},
    )  # fmt: skip
    assert len(load_bundled(experiment.dataset).train) == 1438
    assert [batch.stop - batch.start for batch in training_batches(1438, 479)] == [479, 479, 480]
    assert [m.epoch for m, _ in fit_bundled(experiment)] == [1, 2]
    for n, size in ((1438, 64), (129, 64), (128, 64), (65, 64), (2, 1), (1, 64)):
        batches = training_batches(n, size)
        assert torch.arange(n).tolist() == [i for batch in batches for i in range(n)[batch]]
        assert all(batch.stop - batch.start in (size, size + 1) for batch in batches[:-1])
        assert len(batches) == 1 or batches[-1].stop - batches[-1].start > 1


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu", "sigmoid", "tanh"])
def test_a_cnn_computes_the_textbook_block_whatever_order_it_runs_it_in(activation: str) -> None:
    """The cnn builder runs a max-pool before the activation where the two commute (the activation then touches a
    quarter of the values); each activation's network computes conv -> activation -> pool, on real digits."""
    digits = load_bundled(DatasetSpec(name="digits"))
    model_spec = ExperimentSpec.model_validate(
        {"dataset": {"name": "digits"}, "model": {"kind": "cnn", "channels": [4, 8], "activation": activation}}
    ).model
    torch.manual_seed(0)
    model = create_model(model_spec, (1, 8, 8), 10).eval()
    layers = list(model)
    textbook = list(layers)
    for i, (layer, after) in enumerate(itertools.pairwise(layers)):
        if isinstance(layer, torch.nn.MaxPool2d) and isinstance(after, tuple(ACTIVATIONS.values())):
            textbook[i], textbook[i + 1] = after, layer
    pool_first = textbook != layers
    assert pool_first == (activation in ("relu", "leaky_relu")), layers
    images = normalize(digits.val.images[:64], digits.info.preprocess)
    with torch.no_grad():
        assert torch.equal(model(images), torch.nn.Sequential(*textbook)(images))


@pytest.mark.parametrize("init", ["default", "kaiming", "xavier"])
def test_init_draws_each_layer_s_weights_as_its_paper_says(init: str) -> None:
    """He et al.'s std sqrt(2/fan_in), Glorot and Bengio's sqrt(2/(fan_in + fan_out)), both with zero biases; torch's
    default: uniform within ±1/sqrt(fan_in), a std of 1/sqrt(3 fan_in), biases too. For every conv and linear layer."""
    layers = [{"kind": "conv2d", "out_channels": 64, "padding": 1}, {"kind": "relu"}, {"kind": "flatten"},
              {"kind": "linear", "out_features": 256}, {"kind": "tanh"}, {"kind": "linear"}]  # fmt: skip
    experiment = spec(model={"kind": "sequential", "layers": layers, "init": init})
    torch.manual_seed(0)
    model = create_model(experiment.model, (1, 8, 8), 10)
    weighted = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(weighted) == 3
    for layer in weighted:
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        fan_out *= layer.weight[0, 0].numel()  # a conv's output positions per input value
        expected = {"default": (3 * fan_in) ** -0.5, "kaiming": (2 / fan_in) ** 0.5,
                    "xavier": (2 / (fan_in + fan_out)) ** 0.5}[init]  # fmt: skip
        assert float(layer.weight.detach().std()) == pytest.approx(expected, rel=0.2), (layer, init)
        assert (float(layer.bias.detach().abs().max()) == 0) == (init != "default"), (layer, init)


def test_seeded_runs_are_identical_and_seeds_matter() -> None:
    a, b = fit_bundled(spec(epochs=1)), fit_bundled(spec(epochs=1))
    assert timing_free(a[0][0]) == timing_free(b[0][0])
    assert timing_free(fit_bundled(spec(epochs=1, seed=1))[0][0]) != timing_free(a[0][0])


def test_split_is_stratified_disjoint_and_seeded() -> None:
    labels = load_bundled(DatasetSpec(name="mnist-10k"))
    assert (len(labels.train), len(labels.val)) == (8000, 2000)
    full = torch.cat([labels.train.labels, labels.val.labels])
    for cls in range(10):
        share = (labels.val.labels == cls).sum() / (full == cls).sum()
        assert abs(float(share) - 0.2) < 0.01
    train_idx, val_idx = stratified_split(full, 0.2, seed=0)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert len(train_idx) + len(val_idx) == len(full)
    assert not torch.equal(stratified_split(full, 0.2, seed=1)[1], val_idx)
    assert torch.equal(stratified_split(full, 0.2, seed=0)[1], val_idx)


@pytest.mark.parametrize("name", ["mnist-10k", "digits"])
def test_png_round_trip_gives_the_training_tensor(name: str, tmp_path: Path) -> None:
    dataset = load_dataset(DatasetSpec(name=name), tmp_path)
    preprocess = dataset.info.preprocess
    images = dataset.val.images[:5]
    for i, pixels in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels[0].numpy()).save(path)
        with Image.open(path) as image:
            decoded = image_to_uint8(image, preprocess.channels, preprocess.size)
        assert torch.equal(decoded, pixels)
    # An RGB image of another size is converted and resized to what the model was trained on.
    rgb = Image.new("RGB", (100, 60), (255, 255, 255))
    assert image_to_uint8(rgb, preprocess.channels, preprocess.size).shape == preprocess.input_shape
    assert normalize(images, preprocess).dtype == torch.float32


def test_images_are_read_as_a_viewer_sees_them(tmp_path: Path) -> None:
    """16-bit grey, EXIF-rotated and transparent PNGs of a real digit give the pixels a viewer sees; a non-square
    image is centre-cropped, not squashed."""
    digit = load_dataset(DatasetSpec(name="mnist-10k"), tmp_path).val.images[0, 0].numpy()

    def decoded(image: Image.Image) -> np.ndarray:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", exif=image.getexif())
        with Image.open(buffer) as reopened:
            return image_to_uint8(reopened, 1, (28, 28))[0].numpy()

    # Pillow's own conversion of 16-bit grey clips every value over 255 to white.
    sixteen_bit = Image.fromarray(digit.astype(np.uint16) * 257)
    assert not np.array_equal(np.asarray(sixteen_bit.convert("L")), digit)
    assert np.array_equal(decoded(sixteen_bit), digit)
    # Stored on its side, as a phone stores a photo, with the tag that says how to turn it upright.
    on_its_side = Image.fromarray(digit).transpose(Image.Transpose.ROTATE_90)
    assert not np.array_equal(decoded(on_its_side), digit)
    on_its_side.getexif()[ExifTags.Base.Orientation] = 6
    assert np.array_equal(decoded(on_its_side), digit)
    # EXIF that does not parse is ignored (Pillow raises reading it), as browsers ignore it.
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG", exif=b"Exif\x00\x00XX\x00*\x00\x00\x00\x08")
    with Image.open(buffer) as broken:
        assert np.array_equal(image_to_uint8(broken, 1, (28, 28))[0].numpy(), digit)
    # Black ink whose opacity is the digit: on a white page, a dark digit on white.
    ink = Image.merge("LA", (Image.new("L", (28, 28), 0), Image.fromarray(digit)))
    assert np.abs(decoded(ink).astype(int) - (255 - digit.astype(int))).max() <= 1
    # Wider than tall: the shorter side is scaled to fit and the middle kept, as uploaded training sets are.
    wide = Image.fromarray(np.concatenate([np.zeros((28, 14), np.uint8), digit, np.zeros((28, 14), np.uint8)], 1))
    assert np.array_equal(decoded(wide), digit)


def test_predictor_matches_the_trained_model_on_real_images(tmp_path: Path) -> None:
    experiment = spec(epochs=2)
    checkpoint = fit_bundled(experiment)[-1][1]
    predictor = Predictor(checkpoint)
    dataset = load_dataset(experiment.dataset, tmp_path)
    correct = 0
    for pixels, label in zip(dataset.val.images[:50], dataset.val.labels[:50], strict=True):
        scores = predictor.predict(Image.fromarray(pixels[0].numpy()), top_k=3)
        assert len(scores) == 3 and scores[0].probability >= scores[1].probability >= scores[2].probability
        correct += scores[0].label == int(label)
    assert correct >= 40  # the 8x8 digits MLP reaches ~90% after two epochs


def test_the_mistakes_of_a_cell_row_or_column_of_the_confusion_matrix() -> None:
    experiment = spec(epochs=1)
    evaluation = Evaluation.of(Predictor(fit_bundled(experiment)[-1][1]), load_bundled(experiment.dataset).val)
    matrix, labels, predicted = evaluation.confusion(), evaluation.labels, evaluation.predicted
    assert int(matrix.sum() - matrix.trace()) > 0  # one epoch leaves mistakes to find
    everything = evaluation.worst_errors(10_000)
    for i, j in ((i, j) for i in range(10) for j in range(10) if i != j):
        cell = evaluation.worst_errors(10_000, true=i, predicted=j)
        assert len(cell) == matrix[i, j] and all(labels[k] == i and predicted[k] == j for k in cell)
        assert cell == [k for k in everything if k in cell]  # in the same order: most confidently wrong first
    assert len(evaluation.worst_errors(10_000, true=2)) == matrix[2].sum() - matrix[2, 2]
    assert len(evaluation.worst_errors(10_000, predicted=2)) == matrix[:, 2].sum() - matrix[2, 2]
    confidence = torch.softmax(evaluation.logits, dim=1).max(dim=1).values[everything]
    assert len(everything) == matrix.sum() - matrix.trace() and (confidence[:-1] >= confidence[1:]).all()


def test_predictor_serves_conv_nets_channels_last_with_the_contiguous_models_answers() -> None:
    experiment = spec(epochs=1, model={"kind": "cnn", "channels": [8, 16], "hidden": 32})
    predictor = Predictor(fit_bundled(experiment)[-1][1])
    second_conv = [m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d)][1]
    assert second_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not second_conv.weight.is_contiguous()
    images = load_bundled(experiment.dataset).val.images[:64]
    plain = create_model(experiment.model, predictor.preprocess.input_shape, len(predictor.class_names))
    plain.load_state_dict(predictor.model.state_dict())
    with torch.inference_mode():
        expected = plain.eval()(normalize(images, predictor.preprocess))
    served = predictor.logits(images)
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(served.argmax(1), expected.argmax(1))


def test_checkpoints_load_only_as_weights(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    planted = malicious_checkpoint(sentinel)
    with pytest.raises(UnreadableCheckpoint, match="UnpicklingError"):
        load_checkpoint(planted)
    assert not sentinel.exists()
    with pytest.raises(UnreadableCheckpoint):  # truncated
        load_checkpoint(planted[:100])


def test_registries_list_the_bundled_datasets() -> None:
    assert {"mnist-10k", "digits"} <= set(dataset_names())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_trains_and_serves_fp32_weights(precision: str) -> None:
    experiment = spec(
        model={"kind": "cnn", "channels": [8], "hidden": 32}, optimizer={"kind": "adam", "lr": 0.01}, epochs=2,
        precision=precision,
    )  # fmt: skip
    rows = fit_bundled(experiment)
    assert rows[-1][0].val_accuracy > 0.85  # the 8x8 digits are easy; broken arithmetic is not
    content = load_checkpoint(rows[-1][1])
    assert all(t.dtype == torch.float32 for t in content.model_state.values() if t.is_floating_point())
    assert ("scaler" in content.trainer_state and content.trainer_state["scaler"] is not None) == (precision == "fp16")


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="inductor needs a C++ compiler")
def test_compile_is_timed_apart_covers_every_batch_shape_and_trains_like_eager(monkeypatch) -> None:
    import torch._dynamo  # here: importing it costs every test module a second
    from torch._dynamo.utils import counters

    def compile_then_forbid_recompiles(*args, **kwargs) -> tuple[torch.nn.Module, float]:
        counters.clear()
        compiled = compile_model(*args, **kwargs)
        # Graphs were made (torch 2.11's in-place `Module.compile` made none for a Sequential, and said nothing).
        assert counters["stats"]["unique_graphs"] >= 1
        # From here on, a batch shape or mode the warm-up missed would compile inside an epoch: make it an error.
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        return compiled

    monkeypatch.setattr("worker.engine.compile_model", compile_then_forbid_recompiles)
    # 1,437 training and 360 validation digits: two training batch sizes (64, 29) and two evaluation ones.
    eager = fit_bundled(spec(epochs=2))
    compiled = fit_bundled(spec(epochs=2, compile=True))
    assert compiled[0][0].compile_s > 0 and compiled[1][0].compile_s is None and eager[0][0].compile_s is None
    for (e, _), (c, _) in zip(eager, compiled, strict=True):  # fused bf16 kernels round differently
        assert c.val_accuracy == pytest.approx(e.val_accuracy, abs=0.02)
        assert c.val_loss == pytest.approx(e.val_loss, rel=0.02)
    # torch.compile leaves the state-dict keys alone: the checkpoint serves as an eager model.
    assert Predictor(compiled[-1][1]).epoch == 2


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")
def test_a_worker_that_cannot_compile_says_to_set_compile_false(monkeypatch) -> None:
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, "/nonexistent/g++"))
    monkeypatch.setattr(torch._inductor.config, "force_disable_caches", True)  # a cached kernel needs no compiler
    with pytest.raises(CompileFailed, match=r"No working C\+\+ compiler.*Set compile: false"):
        fit_bundled(spec(epochs=1, compile=True))


def test_cuda_graphs_are_refused_exactly_where_a_replay_would_be_wrong() -> None:
    """The choice `fit` makes on a GPU, checked here without one: every optimizer the spec offers but RMSprop has a
    fused kernel that a graph can replay; fp16's scaler, a per-batch lr and torch.compile each rule graphs out."""
    from pydantic import TypeAdapter

    from service.specs import OptimizerSpec
    from worker.engine import build_optimizer
    from worker.steps import graph_blocker

    cuda, params = torch.device("cuda"), list(torch.nn.Linear(4, 2).parameters())
    bf16, fp16 = torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu", enabled=True)

    def blocker(optimizer: dict, scaler=bf16, device=cuda, per_batch_lr=False, compiled=False) -> str | None:
        built = build_optimizer(TypeAdapter(OptimizerSpec).validate_python(optimizer), params)
        return graph_blocker(device, built, scaler, per_batch_lr=per_batch_lr, compiled=compiled)

    assert [blocker({"kind": kind}) for kind in ("sgd", "adam", "adamw")] == [None, None, None]
    assert "RMSprop has no fused kernel" in blocker({"kind": "rmsprop"})
    assert "fp16" in blocker({"kind": "adam"}, scaler=fp16)
    assert "every batch" in blocker({"kind": "adam"}, per_batch_lr=True)
    assert "torch.compile" in blocker({"kind": "adam"}, compiled=True)
    assert blocker({"kind": "adam"}, device=CPU) == "cpu is not a CUDA device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize(
    "overrides",
    [
        # dropout (random numbers inside the graph), fused SGD with momentum, an lr that changes every epoch
        {"optimizer": {"kind": "sgd", "lr": 0.05, "momentum": 0.9}, "scheduler": {"kind": "step", "step_size": 1}},
        # a conv net in bf16 autocast and channels-last, fused Adam, clipped gradients
        {
            "model": {"kind": "cnn", "channels": [8, 16], "hidden": 32}, "precision": "bf16", "grad_clip_norm": 1.0,
            "optimizer": {"kind": "adam", "lr": 0.01},
        },
    ],
)
def test_cuda_graph_steps_train_as_eager_steps_do(overrides: dict, caplog) -> None:
    experiment = spec(deterministic=True, **overrides)
    dataset = load_bundled(experiment.dataset)  # 1,437 training digits: 22 full batches and one of 29 each epoch

    def train(graphs: bool) -> list[EpochMetrics]:
        rows: list[EpochMetrics] = []
        fit(experiment, dataset, torch.device("cuda"), on_epoch=lambda m, _: rows.append(m), cuda_graphs=graphs)
        return rows

    eager = train(False)
    with caplog.at_level(logging.INFO, logger="worker.steps"):
        graphed = train(True)
    recorded = [r for r in caplog.records if "recorded as a CUDA graph" in r.getMessage()]
    # Once, or once per epoch where the scheduler changed the lr that the graph holds.
    assert len(recorded) == (3 if "scheduler" in overrides else 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for e, g in zip(eager, graphed, strict=True):
        assert (g.train_loss, g.val_loss) == pytest.approx((e.train_loss, e.val_loss), rel=1e-4, abs=1e-5)
        assert (g.train_accuracy, g.val_accuracy) == pytest.approx((e.train_accuracy, e.val_accuracy), abs=0.005)
        assert g.lr == e.lr
    assert graphed[-1].val_accuracy > 0.85


def test_auto_precision_is_bf16_exactly_where_the_device_has_it() -> None:
    from worker.numerics import native_bf16, resolve_precision

    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16(CPU) else "fp32")
    assert resolve_precision("fp16", CPU) == "fp16"


ALLOCATION_ROUNDS = """
import ctypes, ctypes.util, resource, sys
from worker.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def step():  # 8 x 4 MB written and freed together, like one training step's activations
    blocks = [libc.malloc(4 << 20) for _ in range(8)]
    for block in blocks:
        ctypes.memset(block, 1, 4 << 20)
    for block in blocks:
        libc.free(block)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_the_worker_keeps_freed_memory_instead_of_faulting_it_back_in() -> None:
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", ALLOCATION_ROUNDS, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    # malloc and free straight from C: Python's own allocations between the blocks made the default's trimming,
    # and so this count, vary from run to run.
    default, tuned = faults("default"), faults("tuned")
    # Default malloc hands the 32 MB back to the kernel every round (8,192 pages); tuned, it keeps them.
    assert default > 20 * 4000 and tuned < 20 * 100, (default, tuned)
