"""Fuzzed TrainingRun and ModelVersion manifests: valid examples with 1-3 random mutations each.

A mutation picks a path of the manifest's spec (an existing leaf or a known optional field) and deletes
it or replaces it with a value of another shape: a wrong type, a negative or huge number, an empty,
long, unicode or shell-looking string, a list, a map, null. Seeded, so a failure names its example.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from tests.api_cases import load_example

EXAMPLES = {
    "TrainingRun": [
        "iris-classification.yaml",
        "wine-search.yaml",
        "diabetes-regression.yaml",
        "log-anomaly.yaml",
        "gpu-training.yaml",
    ],
    "ModelVersion": ["modelversion-manual.yaml"],
}
# Optional fields the examples may leave out: the fuzzer sets them too.
EXTRA_PATHS = {
    "TrainingRun": [
        "spec.task", "spec.seed", "spec.suspend", "spec.image", "spec.backoffLimit", "spec.activeDeadlineSeconds",
        "spec.startupDeadlineSeconds", "spec.ttlSecondsAfterFinished", "spec.queueName", "spec.priorityClassName",
        "spec.nodeSelector", "spec.tolerations", "spec.resources.gpus", "spec.resources.limits.memory",
        "spec.resources.requests.cpu", "spec.output.uri", "spec.dataset.format", "spec.dataset.features",
        "spec.dataset.validation.maxMissingFraction", "spec.evaluation.testFraction", "spec.evaluation.cvFolds",
        "spec.evaluation.thresholds", "spec.search.trials", "spec.search.parallelism", "spec.register.aliases",
        "spec.envFrom", "spec.serviceAccountName",
    ],
    "ModelVersion": [
        "spec.aliases", "spec.artifact.sha256", "spec.artifact.format", "spec.artifact.size", "spec.version",
        "spec.metrics", "spec.signature", "spec.envFrom", "spec.deletionPolicy",
    ],
}  # fmt: skip

_text = st.one_of(
    st.just(""),
    st.text(max_size=12),
    st.text(min_size=300, max_size=600),
    st.sampled_from(["$(rm -rf /)", "; echo pwned", "../../etc/passwd", "file://relative", "s3://", "pvc://", "é☃"]),
)
_number = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([-1, 0, 1, 2**31, 2**63 - 1]),
)
VALUES = st.one_of(
    _text,
    _number,
    st.booleans(),
    st.none(),
    st.lists(st.one_of(_text, _number), max_size=4),
    st.dictionaries(st.text(max_size=8), st.one_of(_text, _number), max_size=3),
)
_DELETE = object()


def _leaves(node: Any, prefix: str) -> list[str]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in _leaves(v, f"{prefix}.{k}")]
    return [prefix]


def _apply(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = obj
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        return
    if value is _DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


@st.composite
def manifests(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """One mutated manifest of ``kind``."""
    obj = copy.deepcopy(load_example(draw(st.sampled_from(EXAMPLES[kind]))))
    obj["metadata"]["name"] = "fuzz"
    paths = sorted(set(_leaves(obj["spec"], "spec")) | set(EXTRA_PATHS[kind]))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths))
        _apply(obj, path, draw(st.one_of(st.just(_DELETE), VALUES)))
    return obj
