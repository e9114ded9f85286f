"""The typed API: every example parses, every invalid spec is refused with the field named."""

from __future__ import annotations

import pytest
import yaml
from kubetrain_api import crdgen
from kubetrain_api.models import ModelVersion, TrainingRun, TrainingSchedule, parse_quantity
from pydantic import ValidationError

from tests.api_cases import INVALID, Case, example_files

KINDS = {"TrainingRun": TrainingRun, "ModelVersion": ModelVersion, "TrainingSchedule": TrainingSchedule}


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_every_example_validates(path):
    for doc in yaml.safe_load_all(path.read_text()):
        model = KINDS[doc["kind"]].model_validate(doc)
        # Round trip: what the operator writes back is what the user wrote (plus defaults).
        again = KINDS[doc["kind"]].model_validate(model.dump())
        assert again == model


def test_examples_cover_the_catalogue():
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in example_files()}
    assert kinds == {"TrainingRun", "ModelVersion", "TrainingSchedule"}
    assert len(example_files()) >= 6


def test_there_are_enough_invalid_cases():
    assert len(INVALID) >= 25


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_spec_is_refused_naming_the_field(case: Case):
    manifest = case.manifest()
    with pytest.raises(ValidationError) as err:
        KINDS[manifest["kind"]].model_validate(manifest)
    text = str(err.value)
    assert case.field in _camel_paths(err.value) or case.field in text, text


def _camel_paths(err: ValidationError) -> str:
    return " ".join(".".join(str(p) for p in e["loc"]) for e in err.errors())


def test_spec_only_and_snake_case_both_parse():
    doc = yaml.safe_load((example_files()[0].parent / "iris-classification.yaml").read_text())
    run = TrainingRun.model_validate(doc)
    assert run.spec.dataset.validation.min_rows == 100
    assert run.spec.registration.aliases == ["candidate"]
    assert run.dump()["spec"]["register"]["aliases"] == ["candidate"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", 0.5),
        ("2", 2.0),
        (2, 2.0),
        ("1Gi", 2**30),
        ("512Mi", 512 * 2**20),
        ("1e3", 1000.0),
        ("1k", 1000.0),
    ],
)
def test_parse_quantity(text, value):
    assert parse_quantity(text) == pytest.approx(value)


def test_crds_do_not_drift_from_the_models():
    """`make crds` regenerates them; this fails when someone edits models or YAML alone."""
    assert crdgen.main(["--check", "--out", "crds", "--chart", "helm/kubetrain/crds"]) == 0


@pytest.mark.parametrize(
    "name", ["kubetrain.io_trainingruns.yaml", "kubetrain.io_modelversions.yaml", "kubetrain.io_trainingschedules.yaml"]
)
def test_every_crd_field_is_typed_and_described(name):
    """`kubectl explain` helps on every field: each property below spec/status has a description."""
    crd = yaml.safe_load(crdgen.all_crds()[name].split("\n", 2)[2])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = []

    def walk(node, path):
        if path.count(".") >= 2 and not path.endswith(("[]", "additionalProperties")) and not node.get("description"):
            missing.append(path)
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.additionalProperties")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(schema, "root")
    assert not missing, missing


def test_crd_schema_is_structural_enough():
    crd = yaml.safe_load(crdgen.all_crds()["kubetrain.io_trainingruns.yaml"].split("\n", 2)[2])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node, path):
        assert "$ref" not in node and "anyOf" not in node, path
        typed = (
            "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, path
        if node.get("type") == "object" and path.count(".") > 0 and path != "root.metadata":
            assert node.get("description") or path.endswith("additionalProperties"), path
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.additionalProperties")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(schema, "root")
    spec = schema["properties"]["spec"]["properties"]
    for name in ("model", "dataset", "estimator", "resources", "seed"):
        assert spec[name].get("description"), name
