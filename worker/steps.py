"""One optimisation step over a batch, adding the batch's loss and metrics to sums kept on the device; on a GPU,
the same step replayed from a CUDA graph.

A small model's step on a GPU is bound by launching its kernels from Python, not by running them: the default
CNN at batch 64 is ~60 kernels, ~2.2 ms a step on an H100 eager. A CUDA graph records the step's kernels once
and launches them all in one call: 6-9x the CNN's samples/s there, 7-16x the MLP's (docs/PERFORMANCE.md). The
graph reads the batch from fixed input buffers and writes parameters, optimizer state and the sums in place, so
a replay does what the eager step does with the batch copied in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from worker.numerics import Numerics
from worker.objectives import Objective

log = logging.getLogger(__name__)

# Eager steps before the first capture: the optimizer creates its state and cuDNN picks its algorithms in the
# first step, neither of which may happen while a graph is being recorded.
WARMUP_STEPS = 2


def graph_blocker(
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    per_batch_lr: bool,
    compiled: bool,
) -> str | None:
    """Why the training step cannot be replayed from a CUDA graph, or None when it can. A graph replays fixed
    kernels with fixed arguments and no host synchronisation, which rules out the cases below."""
    if device.type != "cuda":
        return f"{device.type} is not a CUDA device"
    if compiled:
        return "compile: true leaves the step's kernels to torch.compile"
    if per_batch_lr:
        return "the scheduler changes the lr every batch, and a graph holds it as a constant"
    if scaler.is_enabled():
        return "fp16's loss scaling reads the device every step"
    if not all(group.get("fused") for group in optimizer.param_groups):
        return f"{type(optimizer).__name__} has no fused kernel (its step keeps state on the host)"
    return None


@contextmanager
def _capturable(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Fused Adam(W) refuses to be recorded unless its groups say `capturable`, a flag its fused kernel does not
    read; set only while recording, so that checkpoints keep the optimizer's own settings."""
    groups = [group for group in optimizer.param_groups if "capturable" in group]
    for group in groups:
        group["capturable"] = True
    try:
        yield
    finally:
        for group in groups:
            group["capturable"] = False


class TrainStep:
    """`step(inputs, targets)` trains on one batch and adds its loss and metric sums to `loss_sum` and `sums`.

    With `graphs` (which the caller allows only where `graph_blocker` finds nothing), full batches (`batch_size`
    samples) replay a CUDA graph of the step, recorded after a few eager steps and again when a scheduler changes
    the learning rate, which the graph holds as a constant; a partial last batch runs eagerly on the same
    parameters."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        numerics: Numerics,
        scaler: torch.amp.GradScaler,
        *,
        device: torch.device,
        batch_size: int,
        grad_clip_norm: float | None = None,
        graphs: bool = False,
    ) -> None:
        self.model, self.optimizer, self.objective = model, optimizer, objective
        self.numerics, self.scaler, self.grad_clip_norm = numerics, scaler, grad_clip_norm
        self.batch_size = batch_size
        self.loss_sum = torch.zeros((), device=device)
        self.sums = torch.zeros(objective.size(), dtype=torch.float64, device=device)
        self.graphs = graphs
        self._warm = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_lrs: tuple[float, ...] = ()
        self._inputs = self._targets = torch.empty(0)

    def reset(self, loss_sum: float, sums: tuple[float, ...]) -> None:
        """Start an epoch: its sums (from a resumed epoch's, if any) in place, since a graph adds to these tensors;
        and a graph recorded with another lr than the scheduler has set since is dropped, to be recorded again
        (the lr changes only between epochs here: `graph_blocker` refuses a per-batch one)."""
        self.loss_sum.fill_(loss_sum)
        self.sums.copy_(torch.tensor(sums or [0.0] * self.objective.size(), dtype=torch.float64))
        if self._graph is not None and self._graph_lrs != self._lrs():
            self._graph = None

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if not self.graphs or len(targets) != self.batch_size:
            self._eager(inputs, targets)
        elif self._graph is not None:
            self._inputs.copy_(inputs)
            self._targets.copy_(targets)
            self._graph.replay()
        elif self._warm < WARMUP_STEPS:
            self._warm_up(inputs, targets)
        else:
            self._capture(inputs, targets)

    def _eager(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        numerics, optimizer = self.numerics, self.optimizer
        with numerics.autocast():
            outputs = self.model(numerics.layout(inputs))
            loss = self.objective.loss(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        self.loss_sum += loss.detach() * len(targets)
        self.sums += self.objective.tally(outputs, targets)

    def _lrs(self) -> tuple[float, ...]:
        return tuple(group["lr"] for group in self.optimizer.param_groups)

    def _warm_up(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        # On a side stream, as torch.cuda.graph's documentation asks of the iterations before a capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._eager(inputs, targets)
        torch.cuda.current_stream().wait_stream(side)
        self._warm += 1

    def _capture(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Record the step on copies of this batch as the graph's inputs, then replay it for this batch (recording
        runs nothing). Falls back to eager steps for good if recording fails."""
        self._inputs, self._targets = inputs.clone(), targets.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the worker's other threads (lease, recording) may touch CUDA meanwhile.
            with _capturable(self.optimizer), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._eager(self._inputs, self._targets)
        except RuntimeError as exc:
            log.warning("training without CUDA graphs: recording the step failed: %s", exc)
            self.graphs = False
            self._eager(inputs, targets)
            return
        self._graph, self._graph_lrs = graph, self._lrs()
        log.info("training step recorded as a CUDA graph for batches of shape %s", tuple(inputs.shape))
        graph.replay()
