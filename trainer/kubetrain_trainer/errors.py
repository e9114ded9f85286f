"""Failures that end a trainer invocation with a known reason and exit code."""

from __future__ import annotations

from . import contract


class TrainerError(Exception):
    """A failure with a contract reason; the message names the field, column or rule."""

    reason: str = contract.REASON_INTERNAL_ERROR

    @property
    def exit_code(self) -> int:
        return contract.EXIT_CODE_BY_REASON[self.reason]


class ConfigInvalid(TrainerError):
    reason = contract.REASON_CONFIG_INVALID


class DataInvalid(TrainerError):
    reason = contract.REASON_DATA_INVALID


class BelowThreshold(TrainerError):
    reason = contract.REASON_BELOW_THRESHOLD


class VerifyFailed(TrainerError):
    reason = contract.REASON_VERIFY_FAILED


class ArtifactLost(TrainerError):
    """The artifact just written is not at its final location (or not intact): never reported as a success.
    InternalError, so the Job retries it (storage that loses writes may recover)."""

    reason = contract.REASON_INTERNAL_ERROR
