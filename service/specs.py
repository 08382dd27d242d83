"""The contract between the API and the worker: what an experiment is, and what an epoch reports.

Pydantic only: this module must import neither torch nor SQLAlchemy, so that the API can validate a spec
without the engine and the engine can read one without the database.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


class Strict(BaseModel):
    """Unknown fields and NaN/inf are errors, not silently ignored values."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class DatasetSpec(Strict):
    name: Annotated[str, Field(min_length=1, max_length=100, examples=["mnist-10k"])]
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    seed: Seed = 0


class MLPSpec(Strict):
    kind: Literal["mlp"] = "mlp"
    hidden: Annotated[list[Annotated[int, Field(ge=1, le=8192)]], Field(min_length=0, max_length=8)] = [256, 128]
    dropout: Probability = 0.0


class CNNSpec(Strict):
    """Conv blocks (conv -> relu -> pool) with the given channels, then one hidden fully connected layer."""

    kind: Literal["cnn"] = "cnn"
    channels: Annotated[list[Annotated[int, Field(ge=1, le=1024)]], Field(min_length=1, max_length=6)] = [32, 64]
    kernel_size: Annotated[int, Field(ge=1, le=11)] = 3
    pool: Literal["max", "avg", "none"] = "max"
    hidden: Annotated[int, Field(ge=1, le=8192)] = 128
    dropout: Probability = 0.0


ModelSpec = Annotated[MLPSpec | CNNSpec, Field(discriminator="kind")]

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
            raise ValueError("nesterov requires momentum > 0")
        return self


class AdamSpec(Strict):
    kind: Literal["adam"] = "adam"
    lr: LearningRate = 1e-3
    weight_decay: WeightDecay = 0.0


OptimizerSpec = Annotated[SGDSpec | AdamSpec, Field(discriminator="kind")]


class ExperimentSpec(Strict):
    """One training run. Every field but `dataset` and `model` has a default; responses show them all filled in."""

    name: Annotated[str, Field(min_length=1, max_length=200)] = "experiment"
    task: Literal["classification"] = "classification"
    dataset: DatasetSpec
    model: ModelSpec
    optimizer: OptimizerSpec = AdamSpec()
    batch_size: Annotated[int, Field(ge=1, le=8192)] = 64
    epochs: Annotated[int, Field(ge=1, le=1000)] = 5
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class EpochMetrics(BaseModel):
    """What the worker records after each finished epoch: one row per (experiment, epoch)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    duration_s: float
    samples_per_s: float
