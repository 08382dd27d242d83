"""Training recipes in the engine, on real data: optimizers, lr schedules, clipping, early stopping,
augmentation, and exact resumption of all of their state."""

from __future__ import annotations

import math

import pytest
import torch

from service.specs import ColorJitter, ExperimentSpec, GaussianNoise, HFlip, RandomCrop, RandomErasing, Rotation
from tests.conftest import load_bundled
from worker.augment import augmentation_warnings, build_augmentation
from worker.checkpoints import load_checkpoint
from worker.engine import TrainingDiverged, fit

CPU = torch.device("cpu")


def run(overrides: dict, resume=None) -> list:
    spec = ExperimentSpec.model_validate(
        {"dataset": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [64]}, "epochs": 4, **overrides}
    )
    out: list = []
    result = fit(spec, load_bundled(spec.dataset), CPU,
                 on_epoch=lambda m, c: out.append((m, c)), resume=resume)  # fmt: skip
    return out, result


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "expected_lrs"),
    [
        ({"kind": "sgd", "lr": 0.1}, {"kind": "step", "step_size": 2, "gamma": 0.1}, [0.1, 0.1, 0.01, 0.01]),
        ({"kind": "adamw", "lr": 0.01}, {"kind": "cosine", "min_lr": 0.0},
         [0.01 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
        ({"kind": "rmsprop", "lr": 0.001}, None, [0.001] * 4),
    ],
)  # fmt: skip
def test_lr_of_each_epoch_is_recorded(optimizer, scheduler, expected_lrs) -> None:
    rows, _ = run({"optimizer": optimizer, "scheduler": scheduler})
    assert [m.lr for m, _ in rows] == pytest.approx(expected_lrs)
    assert rows[-1][0].train_loss < rows[0][0].train_loss  # it learns


def test_onecycle_warms_up_then_anneals_per_batch() -> None:
    rows, _ = run({"optimizer": {"kind": "sgd", "lr": 0.01}, "scheduler": {"kind": "onecycle", "max_lr": 0.1}})
    lrs = [m.lr for m, _ in rows]
    assert lrs[0] == pytest.approx(0.1 / 25)  # OneCycle starts at max_lr / div_factor
    assert lrs[1] > lrs[0] and lrs[3] < lrs[1]


def test_gradient_clipping_changes_the_updates() -> None:
    plain, _ = run({"optimizer": {"kind": "sgd", "lr": 0.5}, "epochs": 1})
    clipped, _ = run({"optimizer": {"kind": "sgd", "lr": 0.5}, "epochs": 1, "grad_clip_norm": 0.01})
    assert clipped[0][0].train_loss > plain[0][0].train_loss  # tiny steps learn less in one epoch


def test_divergence_fails_with_advice_instead_of_recording_nan() -> None:
    # Seen in the example lr x batch-size sweep: this trial's loss is NaN within its first epoch.
    diverging = {
        "dataset": {"name": "fashion-mnist-10k"}, "model": {"kind": "mlp", "hidden": [256, 128]},
        "optimizer": {"kind": "sgd", "lr": 0.3, "momentum": 0.9}, "batch_size": 32, "epochs": 1,
        "precision": "fp32",  # the sweep ran in fp32; bf16's rounding happens to keep this one finite
    }  # fmt: skip
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) in epoch 1 \(lr 0.3\): lower optimizer.lr"):
        run(diverging)


def test_early_stopping_ends_the_run_with_a_reason() -> None:
    rows, result = run({"epochs": 50, "early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 10.0}})
    assert [m.epoch for m, _ in rows] == [1, 2, 3]  # nothing improves val_loss by 10: epochs 2 and 3 are "bad"
    assert result.last_epoch == 3 and "val_loss has not improved for 2 epochs" in result.stop_reason
    # Resumed from the checkpoint that stopped it (a worker died before marking it done): no more epochs.
    more, again = run({"epochs": 50, "early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 10.0}},
                      resume=load_checkpoint(rows[-1][1]))  # fmt: skip
    assert more == [] and again == result


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": {"kind": "sgd", "lr": 0.05}, "scheduler": {"kind": "onecycle", "max_lr": 0.1}},
        {"scheduler": {"kind": "reduce_on_plateau", "patience": 0, "factor": 0.5}, "grad_clip_norm": 1.0},
        {"augment": [{"kind": "rotation", "degrees": 10}, {"kind": "random_erasing"}], "epochs": 3},
        {"early_stopping": {"patience": 5}, "optimizer": {"kind": "rmsprop"}},
    ],
)
def test_resume_replays_schedules_augmentation_and_stopping_state(overrides) -> None:
    whole, _ = run(overrides)
    resumed, _ = run(overrides, resume=load_checkpoint(whole[1][1]))
    strip = {"duration_s", "samples_per_s"}
    assert [m.model_dump(exclude=strip) for m, _ in resumed] == [m.model_dump(exclude=strip) for m, _ in whole[2:]]


def test_augmentations_draw_per_image() -> None:
    same = torch.rand(1, 1, 16, 16).expand(32, 1, 16, 16).contiguous()
    for spec in (Rotation(degrees=30), RandomCrop(padding=3), GaussianNoise(std=0.2), RandomErasing(p=1.0)):
        out = build_augmentation([spec])(same)
        assert out.shape == same.shape and out.min() >= 0 and out.max() <= 1
        distinct = {tuple(img.flatten().tolist()) for img in out}
        assert len(distinct) > 16, spec.kind  # not one draw for the whole batch
    flipped = build_augmentation([HFlip(p=1.0)])(same)
    assert torch.equal(flipped, same.flip(-1))
    erased = build_augmentation([RandomErasing(p=1.0, scale=(0.1, 0.1))])(same)
    changed = (erased != same).flatten(1).float().mean(1)
    assert bool((changed > 0).all()) and bool((changed < 0.2).all())


def test_warnings_for_augmentations_known_to_hurt() -> None:
    specs = [HFlip(), Rotation(degrees=45), Rotation(degrees=10)]
    digits = augmentation_warnings(specs, dataset="mnist-10k", channels=1, orientation_matters=True)
    assert len(digits) == 2 and "augment[0] (hflip)" in digits[0] and "augment[1] (rotation)" in digits[1]
    assert augmentation_warnings(specs, dataset="fashion-mnist", channels=1, orientation_matters=False) == []
    gray = augmentation_warnings([ColorJitter(hue=0.1)], dataset="fashion-mnist", channels=1, orientation_matters=False)
    assert len(gray) == 1 and "grayscale" in gray[0] and "hue" in gray[0]
