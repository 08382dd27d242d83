"""Sweeps: one base spec, values to try at spec paths (a grid, random draws, or both), one experiment per trial."""

from __future__ import annotations

import itertools
import math
import random
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from service.compare import compact
from service.errors import InvalidInput
from service.hints import NOT_AN_OBJECT, message_with_hint, section_key
from service.schemas import ExperimentPublic, FindingKind
from service.specs import ExperimentSpec, Name, Seed, Strict

SpecPath = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[a-z_]+(\.[a-z_0-9]+)*$")]


class RandomChoice(Strict):
    values: Annotated[list[Any], Field(min_length=1, max_length=100)]


class RandomRange(Strict):
    """Uniform in [low, high], or log-uniform with `log`; rounded to an integer with `integer`."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RandomRange:
        if self.low > self.high or (self.log and self.low <= 0):
            raise ValueError("need low <= high, and low > 0 for a log range")
        return self


class SweepCreate(Strict):
    name: Name = "sweep"
    base: ExperimentSpec
    # Every combination of these values is tried ...
    grid: Annotated[dict[SpecPath, Annotated[list[Any], Field(min_length=1, max_length=100)]], Field(max_length=8)] = (
        {}
    )
    # ... each with `max_trials` / combinations random draws from these (or `max_trials` draws alone).
    random: Annotated[dict[SpecPath, RandomChoice | RandomRange], Field(max_length=8)] = {}
    max_trials: Annotated[int, Field(ge=1, le=200)] = 20
    seed: Seed = 0

    @model_validator(mode="after")
    def _something_to_vary(self) -> SweepCreate:
        if not self.grid and not self.random:
            raise ValueError("give `grid` or `random` (or both): the spec paths to vary and their values")
        if set(self.grid) & set(self.random):
            raise ValueError(f"paths both in grid and random: {sorted(set(self.grid) & set(self.random))}")
        return self


class TrialPublic(BaseModel):
    experiment_id: int
    name: str
    params: dict[str, Any]
    label: str  # the params in brief, as the trial's name ends: `optimizer.lr=0.01, augment=[hflip()]`
    status: str
    best_epoch: int | None
    best_val_accuracy: float | None
    best_val_loss: float | None
    warnings: list[str]  # what POST /experiments would have warned of this trial's spec
    # What its curves show (GET /experiments/{id}/diagnosis, by kind): an lr sweep's too-large steps at a glance.
    findings: list[FindingKind] = []


class SweepPublic(BaseModel):
    id: int
    name: str
    request: SweepCreate
    # Best first (validation accuracy; validation loss for a regression); trials without a finished epoch last.
    trials: list[TrialPublic]


def expand(request: SweepCreate) -> list[tuple[dict[str, Any], ExperimentSpec]]:
    """The trials: (params, spec) each, validated like any submitted spec. 422 names the offending path."""
    grid = request.grid
    combinations = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if len(combinations) > request.max_trials:
        raise InvalidInput(
            f"the grid has {len(combinations)} combinations, more than max_trials={request.max_trials}",
            loc=["body", "max_trials"],
        )
    if request.random:
        rng = random.Random(request.seed)
        space = request.random.items()
        draws = [{path: _draw(values, rng) for path, values in space} for _ in range(request.max_trials)]
        combinations = [{**combinations[i % len(combinations)], **draw} for i, draw in enumerate(draws)]
    base = request.base.model_dump(mode="json")
    given = request.base.model_dump(mode="json", exclude_unset=True)
    trials = []
    for params in combinations:
        values = dict(base)
        # A new `kind` first: it starts its section afresh, so that the paths below it land in the new section.
        for path, value in sorted(params.items(), key=lambda item: not item[0].endswith(".kind")):
            if path.endswith(".kind"):
                section = path.removesuffix(".kind")
                values = _with_path(values, section, {**_section(given, section), "kind": value})
            else:
                values = _with_path(values, path, value)
        label = trial_label(params)
        values["name"] = f"{request.name} [{label}]"[:200]
        try:
            trials.append((params, ExperimentSpec.model_validate(values)))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            shape = section_key(ExperimentSpec, error["loc"]) if error["type"] in NOT_AN_OBJECT else None
            if where in params and shape is not None:  # `"grid": {"optimizer": ["sgd", "adam"]}`
                message = f"{error['msg']}: vary {where}.{shape[0]} to give each trial its {shape[0]}"
            else:
                message = message_with_hint(ExperimentSpec, error, error["loc"])
            raise InvalidInput(f"trial {label}: {where}: {message}", loc=["body", where]) from None
    return trials


def _draw(space: RandomChoice | RandomRange, rng: random.Random) -> Any:
    if isinstance(space, RandomChoice):
        return rng.choice(space.values)
    if space.log:
        value = math.exp(rng.uniform(math.log(space.low), math.log(space.high)))
    else:
        value = rng.uniform(space.low, space.high)
    return round(value) if space.integer else float(f"{value:.6g}")


def _with_path(values: dict, path: str, value: Any) -> dict:
    """A copy of nested `values` with `path` set; the path's parents must exist in the spec."""
    head, _, rest = path.partition(".")
    if not rest:
        return {**values, head: value}
    child = values.get(head)
    if not isinstance(child, dict):
        raise InvalidInput(f"spec path {path!r}: {head!r} is not a section of the spec", loc=["body", path])
    return {**values, head: _with_path(child, rest, value)}


def _section(values: dict, path: str) -> dict:
    """What the base spec itself gave at `path` (the `kind` left out): a section whose kind a trial changes keeps
    those fields, not the defaults of the base's kind, which the new kind may not have (`label_smoothing` of
    cross_entropy under mse; an mlp's `hidden` list under a cnn)."""
    for part in path.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return {k: v for k, v in values.items() if k != "kind"} if isinstance(values, dict) else {}


def trial_label(params: dict[str, Any]) -> str:
    """How a trial is named (`optimizer.lr=0.01, augment=[hflip()]`): its name's suffix, its curve's label in
    the sweep's chart, and the prefix of any error about it."""
    return ", ".join(f"{path}={_short(compact(value))}" for path, value in params.items())


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def sweep_public(
    sweep_id: int,
    name: str,
    request: dict,
    experiments: list[ExperimentPublic],
    findings: dict[int, list[FindingKind]] | None = None,
) -> SweepPublic:
    findings = findings or {}
    trials = [
        TrialPublic(
            experiment_id=e.id,
            name=e.name,
            params=e.sweep_params or {},
            label=trial_label(e.sweep_params or {}),
            status=e.status,
            best_epoch=e.best.epoch if e.best else None,
            best_val_accuracy=e.best.val_accuracy if e.best else None,
            best_val_loss=e.best.val_loss if e.best else None,
            warnings=e.warnings,
            findings=findings.get(e.id, []),
        )
        for e in sorted(experiments, key=_best_first)
    ]
    return SweepPublic(id=sweep_id, name=name, request=SweepCreate.model_validate(request), trials=trials)


def _best_first(experiment: ExperimentPublic) -> tuple[bool, float, int]:
    """By the metric the trial's best epoch was chosen by; trials without a finished epoch last."""
    best = experiment.best
    if best is None:
        return True, 0.0, experiment.id
    regression = experiment.spec.task == "regression"
    return False, best.val_loss if regression else -(best.val_accuracy or 0.0), experiment.id
