"""Fuzzed specs against the typed API: each is accepted, or refused with an error that names a spec field.

Never another exception type (a TypeError or KeyError from a validator would reach the operator as a
crash instead of a ConfigInvalid condition)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from kubetrain_api.models import ModelVersion, TrainingRun
from pydantic import ValidationError

from tests.fuzz_specs import manifests

KINDS = {"TrainingRun": TrainingRun, "ModelVersion": ModelVersion}
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def check_spec(doc: dict[str, Any]) -> None:
    model = KINDS[doc["kind"]]
    try:
        parsed = model.model_validate(doc)
    except ValidationError as err:
        for error in err.errors():
            assert error["loc"], f"an error without a field: {error}"
            assert error["loc"][0] == "spec", f"an error outside spec for a spec mutation: {error}"
            assert error["msg"], error
        return
    # Accepted: what the operator would write back parses again to the same object.
    assert model.model_validate(parsed.dump()) == parsed


@FUZZ
@given(manifests("TrainingRun"))
def test_fuzzed_training_runs_are_accepted_or_refused_naming_a_field(doc: dict[str, Any]) -> None:
    check_spec(doc)


@FUZZ
@given(manifests("ModelVersion"))
def test_fuzzed_model_versions_are_accepted_or_refused_naming_a_field(doc: dict[str, Any]) -> None:
    check_spec(doc)
