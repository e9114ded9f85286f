"""What an invocation has learned so far, and the one place where exceptions become results.

``RunFacts`` collects the facts a result reports (task, metrics, model, ...) as the stages produce
them; ``result_of`` is a context manager that turns whatever the block raises into a
``contract.Result`` built from those facts: a ``TrainerError`` gives its reason and exit code, anything
else the retryable ``InternalError`` with the exception's type and message (and a traceback on stderr).
Exceptions carry no run state.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import contract
from .errors import TrainerError

MAX_WARNINGS = 10
MAX_INTERNAL_MESSAGE = 1000


@dataclass
class RunFacts:
    """The facts known so far; every result, success or failure, is built from them."""

    task: str | None = None
    estimator: str | None = None
    primary_metric: str | None = None
    metrics: dict[str, float] | None = None
    model: dict[str, Any] | None = None
    best_params: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    signature: contract.Signature | None = None
    promotion: contract.PromotionScores | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: perf_counter() when the run began; when set, results report ``timings["total"]``
    started: float | None = None

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the block's wall time to ``timings[step]`` (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - start

    def rounded_timings(self) -> dict[str, float]:
        """Step → seconds (3 decimals), with ``total`` so far when the run's start is known."""
        timings = dict(self.timings)
        if self.started is not None:
            timings["total"] = time.perf_counter() - self.started
        return {k: round(v, 3) for k, v in timings.items()}

    def result(self, reason: str, message: str = "") -> contract.Result:
        """The result for ``reason`` (its exit code and outcome from the contract) with these facts."""
        from .artifacts import library_versions

        code = contract.EXIT_CODE_BY_REASON[reason]
        return contract.Result(
            outcome=contract.OUTCOME_SUCCEEDED if code == contract.EXIT_OK else contract.OUTCOME_FAILED,
            reason=reason,
            message=message,
            exit_code=code,
            task=self.task,
            estimator=self.estimator,
            primary_metric=self.primary_metric,
            metrics=self.metrics,
            model=self.model,
            best_params=self.best_params,
            dataset=self.dataset,
            versions=library_versions(),
            timings=self.rounded_timings() or None,
            warnings=self.warnings[:MAX_WARNINGS] or None,
            signature=self.signature,
            promotion=self.promotion,
        )


@dataclass
class Outcome:
    """Filled by the ``result_of`` block on success, or by ``result_of`` itself on failure."""

    facts: RunFacts
    result: contract.Result | None = None

    @property
    def final(self) -> contract.Result:
        if self.result is None:  # a block that neither set a result nor raised: a bug, reported as one
            return self.facts.result(contract.REASON_INTERNAL_ERROR, "the trainer produced no result")
        return self.result


def failure(exc: Exception, facts: RunFacts) -> contract.Result:
    """The result for an exception: a TrainerError's reason and message, else InternalError."""
    if isinstance(exc, TrainerError):
        return facts.result(exc.reason, str(exc))
    traceback.print_exception(exc, file=sys.stderr)
    message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:MAX_INTERNAL_MESSAGE]
    return facts.result(contract.REASON_INTERNAL_ERROR, message)


@contextmanager
def result_of(facts: RunFacts | None = None) -> Iterator[Outcome]:
    """``with result_of(facts) as outcome: outcome.result = ...`` — afterwards ``outcome.final`` is the
    block's result, or the failure result of what it raised (``Exception`` only: KeyboardInterrupt and
    SystemExit pass through)."""
    outcome = Outcome(facts if facts is not None else RunFacts())
    try:
        yield outcome
    except Exception as exc:
        outcome.result = failure(exc, outcome.facts)
