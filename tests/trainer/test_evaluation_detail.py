"""evaluation_detail on real data (iris, wine, diabetes, the log-anomaly example) matches what scikit-learn
computes directly on the same split; curves are downsampled with their ends kept; bad input is explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kubetrain_trainer import evaluation_detail as ed
from sklearn import metrics as skm
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris, load_wine, make_classification
from sklearn.ensemble import IsolationForest, RandomForestClassifier, RandomForestRegressor
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC

REPO = Path(__file__).resolve().parents[2]
SEED = 42


def split(X: Any, y: Any, stratify: bool = True) -> tuple[Any, Any, Any, Any]:
    return train_test_split(X, y, test_size=0.25, random_state=SEED, stratify=y if stratify else None)  # type: ignore[no-any-return]


def fitted(kind: str) -> tuple[Any, Any, Any, str]:
    """(model, X_test, y_test, task) for one of the bundled datasets."""
    if kind == "iris":
        X, y = load_iris(return_X_y=True, as_frame=True)
        model: Any = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
        task = ed.CLASSIFICATION
    elif kind == "wine":
        X, y = load_wine(return_X_y=True, as_frame=True)
        model = RandomForestClassifier(n_estimators=50, random_state=SEED)
        task = ed.CLASSIFICATION
    elif kind == "diabetes":
        X, y = load_diabetes(return_X_y=True, as_frame=True)
        model = RandomForestRegressor(n_estimators=50, random_state=SEED)
        task = ed.REGRESSION
    else:
        raise AssertionError(kind)
    Xtr, Xte, ytr, yte = split(X, y, stratify=task == ed.CLASSIFICATION)
    return model.fit(Xtr, ytr), Xte, yte, task


def log_anomaly() -> tuple[Any, pd.DataFrame, np.ndarray]:
    """The log-anomaly example's records, its estimator settings (isolation forest, contamination 0.05),
    and labels for checking the flags: 5xx responses or latency beyond 1 s."""
    records = json.loads((REPO / "examples" / "data" / "logs-export.json").read_text())["logs"]
    df = pd.DataFrame(records).drop(columns=["request_id", "timestamp"])
    labels = ((df["status"] >= 500) | (df["latency_ms"] > 1000)).astype(int).to_numpy()
    model = Pipeline(
        [
            ("prep", ColumnTransformer(
                [("cat", OneHotEncoder(handle_unknown="ignore"), ["service", "level"])], remainder="passthrough"
            )),
            ("model", IsolationForest(n_estimators=100, contamination=0.05, random_state=SEED)),
        ]
    )  # fmt: skip
    return model.fit(df), df, labels


def roundtrip(doc: dict[str, Any]) -> dict[str, Any]:
    """evaluation.json: strict JSON (no NaN/inf), and unchanged by a round trip."""
    text = json.dumps(doc, allow_nan=False)
    back: dict[str, Any] = json.loads(text)
    assert back == doc
    return back


@pytest.mark.parametrize("kind", ["iris", "wine"])
def test_classification_matches_scikit_learn(kind: str) -> None:
    model, Xte, yte, task = fitted(kind)
    doc = roundtrip(ed.evaluation_detail(model, Xte, yte, task, seed=0))
    part = doc["classification"]
    pred = model.predict(Xte)
    classes = list(model.classes_)
    assert part["confusionMatrix"]["labels"] == classes
    assert part["confusionMatrix"]["matrix"] == skm.confusion_matrix(yte, pred, labels=classes).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(yte, pred, labels=classes, zero_division=0)
    for i, row in enumerate(part["perClass"]):
        assert row["label"] == classes[i]
        assert row["precision"] == pytest.approx(p[i]) and row["recall"] == pytest.approx(r[i])
        assert row["f1"] == pytest.approx(f[i]) and row["support"] == s[i]
    assert part["accuracy"] == pytest.approx(skm.accuracy_score(yte, pred))
    # one-vs-rest curves, one per class, with sklearn's AUC / AP
    proba = model.predict_proba(Xte)
    assert part["curveAveraging"] == "one-vs-rest" and [c["label"] for c in part["curves"]] == classes
    for i, curve in enumerate(part["curves"]):
        truth = (np.asarray(yte) == classes[i]).astype(int)
        assert curve["roc"]["auc"] == pytest.approx(skm.roc_auc_score(truth, proba[:, i]))
        assert curve["pr"]["averagePrecision"] == pytest.approx(skm.average_precision_score(truth, proba[:, i]))
        fpr, tpr, _ = skm.roc_curve(truth, proba[:, i])
        assert curve["roc"]["fpr"] == pytest.approx(fpr.tolist()) and curve["roc"]["tpr"] == pytest.approx(tpr.tolist())
        assert curve["roc"]["thresholds"][0] is None  # sklearn's first threshold is inf: null in JSON
    macro = np.mean([c["roc"]["auc"] for c in part["curves"]])
    assert macro == pytest.approx(skm.roc_auc_score(yte, proba, multi_class="ovr", labels=classes))
    # permutation importance: sklearn's, same seed, sorted, every feature (fewer than 20)
    fi = doc["featureImportance"]
    ref = permutation_importance(model, Xte, yte, scoring="accuracy", n_repeats=5, random_state=0)
    expected = {c: (m, sd) for c, m, sd in zip(Xte.columns, ref.importances_mean, ref.importances_std, strict=True)}
    assert fi["nFeatures"] == Xte.shape[1] == len(fi["features"])
    for feat in fi["features"]:
        assert (feat["mean"], feat["std"]) == pytest.approx(expected[feat["name"]])
    means = [feat["mean"] for feat in fi["features"]]
    assert means == sorted(means, reverse=True)
    assert doc["warnings"] == []


def test_binary_curves_are_downsampled_keeping_both_ends() -> None:
    X, y = make_classification(n_samples=4000, n_features=30, n_informative=8, random_state=SEED)
    X = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(30)])
    Xtr, Xte, ytr, yte = split(X, y)
    model = LogisticRegression(max_iter=1000).fit(Xtr, ytr)
    doc = roundtrip(ed.evaluation_detail(model, Xte, yte, ed.CLASSIFICATION, n_repeats=2))
    part = doc["classification"]
    assert part["curveAveraging"] == "binary"
    (curve,) = part["curves"]
    score = model.predict_proba(Xte)[:, 1]
    prec, rec, _ = skm.precision_recall_curve(yte, score)
    assert curve["pr"]["points"] == len(prec) > ed.MAX_POINTS
    assert len(curve["pr"]["precision"]) <= ed.MAX_POINTS and len(curve["roc"]["fpr"]) <= ed.MAX_POINTS
    assert curve["pr"]["precision"][0] == pytest.approx(prec[0]) and curve["pr"]["recall"][-1] == pytest.approx(rec[-1])
    assert set(np.round(curve["pr"]["recall"], 12)) <= set(np.round(rec, 12))  # real points, not interpolated
    assert curve["pr"]["thresholds"][-1] is None  # the last PR point has no threshold
    assert curve["roc"]["auc"] == pytest.approx(skm.roc_auc_score(yte, score))
    # top 20 of 30 features
    fi = doc["featureImportance"]
    assert fi["nFeatures"] == 30 and len(fi["features"]) == ed.TOP_FEATURES


def test_regression_matches_scikit_learn() -> None:
    model, Xte, yte, task = fitted("diabetes")
    doc = roundtrip(ed.evaluation_detail(model, Xte, yte, task, seed=0))
    part = doc["regression"]
    pred = model.predict(Xte)
    residuals = np.asarray(yte) - pred
    got = [q["value"] for q in part["residuals"]["quantiles"]]
    assert [q["q"] for q in part["residuals"]["quantiles"]] == list(ed.QUANTILES)
    assert got == pytest.approx(np.quantile(residuals, ed.QUANTILES).tolist())
    assert part["residuals"]["mean"] == pytest.approx(residuals.mean())
    pva = part["predictedVsActual"]
    assert pva["r2"] == pytest.approx(skm.r2_score(yte, pred))
    assert pva["mae"] == pytest.approx(skm.mean_absolute_error(yte, pred))
    assert pva["rmse"] == pytest.approx(skm.root_mean_squared_error(yte, pred))
    assert pva["pearson"] == pytest.approx(np.corrcoef(yte, pred)[0, 1])
    assert sum(b["count"] for b in pva["bins"]) == len(yte) and len(pva["bins"]) == 10
    assert pva["sample"]["actual"] == pytest.approx(sorted(np.asarray(yte, dtype=float).tolist()))
    ref = permutation_importance(model, Xte, yte, scoring="r2", n_repeats=5, random_state=0)
    top = doc["featureImportance"]["features"][0]
    assert top["name"] == Xte.columns[int(np.argmax(ref.importances_mean))]
    assert top["mean"] == pytest.approx(ref.importances_mean.max())


def test_anomaly_detection_on_the_log_example() -> None:
    model, X, labels = log_anomaly()
    doc = roundtrip(ed.evaluation_detail(model, X, labels, ed.ANOMALY, seed=0))
    part = doc["anomalyDetection"]
    flags = (model.predict(X) == -1).astype(int)
    cut = part["cut"]
    assert cut["flagged"] == flags.sum() and cut["flaggedFraction"] == pytest.approx(flags.mean())
    assert cut["contamination"] == 0.05 and cut["offset"] == pytest.approx(model[-1].offset_)
    scores = model.decision_function(X)
    assert part["scores"]["name"] == "decision_function" and part["scores"]["threshold"] == 0.0
    assert sum(part["scores"]["histogram"]["counts"]) == len(X)
    assert [q["value"] for q in part["scores"]["quantiles"]] == pytest.approx(
        np.quantile(scores, ed.QUANTILES).tolist()
    )
    # the cut is where decision_function crosses 0: exactly the flagged points are below it
    assert ((scores < 0).astype(int) == flags).all()
    assert part["labels"]["confusionMatrix"]["matrix"] == skm.confusion_matrix(labels, flags, labels=[0, 1]).tolist()
    assert part["labels"]["recall"] == pytest.approx(skm.recall_score(labels, flags))
    assert doc["featureImportance"]["scoring"] == "f1 of the anomaly flags"
    # without labels: the unsupervised importance (drop of the mean score) still ranks the raw columns
    unlabelled = roundtrip(ed.evaluation_detail(model, X, None, ed.ANOMALY, seed=0))
    assert "labels" not in unlabelled["anomalyDetection"]
    names = {f["name"] for f in unlabelled["featureImportance"]["features"]}
    assert names == set(X.columns)
    assert unlabelled["featureImportance"]["features"][0]["mean"] > 0


def test_a_model_without_predict_proba_gets_no_curves_and_a_warning() -> None:
    X, y = load_iris(return_X_y=True, as_frame=True)
    Xtr, Xte, ytr, yte = split(X, y)
    model = make_pipeline(StandardScaler(), LinearSVC(random_state=0)).fit(Xtr, ytr)
    doc = roundtrip(ed.evaluation_detail(model, Xte, yte, ed.CLASSIFICATION, importance=False))
    assert "curves" not in doc["classification"] and "featureImportance" not in doc
    assert doc["warnings"] == ["no ROC/PR curves: the model has no predict_proba"]


def test_a_model_that_breaks_yields_warnings_not_an_exception() -> None:
    class Broken:
        def predict(self, X: Any) -> Any:
            raise RuntimeError("predict exploded")

        def fit(self, X: Any, y: Any) -> Broken:
            return self

    doc = ed.evaluation_detail(Broken(), pd.DataFrame({"a": [1, 2]}), [0, 1], ed.CLASSIFICATION)
    assert "classification" not in doc
    assert any("classification detail not computed: RuntimeError: predict exploded" in w for w in doc["warnings"])
    assert any(w.startswith("feature importance not computed") for w in doc["warnings"])


def test_bad_task_and_missing_labels_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown task 'clustering'"):
        ed.evaluation_detail(None, [], [], "clustering")
    with pytest.raises(ValueError, match="regression needs y_test"):
        ed.evaluation_detail(None, [], None, ed.REGRESSION)


def test_downsample_indices() -> None:
    assert ed.downsample_indices(5, 200).tolist() == [0, 1, 2, 3, 4]
    idx = ed.downsample_indices(10_000, 200)
    assert len(idx) <= 200 and idx[0] == 0 and idx[-1] == 9999 and (np.diff(idx) > 0).all()


def test_summary_for_the_status() -> None:
    model, Xte, yte, task = fitted("iris")
    s = ed.summary(ed.evaluation_detail(model, Xte, yte, task, n_repeats=2))
    assert s["task"] == "classification" and len(s["topFeatures"]) == 3 and set(s["rocAuc"]) == {"0", "1", "2"}


class _CountingModel(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A fitted classifier that records how many rows each predict call saw."""

    def __init__(self, model: Any = None) -> None:
        self.model = model
        self.rows_seen: list[int] = []
        if model is not None:
            self.classes_ = model.classes_

    def fit(self, X: Any, y: Any) -> _CountingModel:
        return self

    def predict(self, X: Any) -> Any:
        self.rows_seen.append(len(X))
        return self.model.predict(X)


def test_permutation_importance_on_a_large_holdout_is_capped_and_still_ranks_the_signal_first() -> None:
    rng = np.random.default_rng(3)
    n = 60_000
    X = pd.DataFrame({f"noise{i}": rng.normal(size=n) for i in range(4)})
    X.insert(2, "signal", rng.normal(size=n))
    y = pd.Series((X["signal"] + 0.3 * rng.normal(size=n) > 0).astype(int), name="y")
    model = _CountingModel(LogisticRegression().fit(X.iloc[:5000], y.iloc[:5000]))
    fi = ed.permutation_detail(model, X, y, ed.CLASSIFICATION, n_repeats=3, seed=11)
    # the cap and the rows used are recorded; every prediction saw at most the cap, never the hold-out
    assert (fi["maxRows"], fi["rowsUsed"], fi["sampled"]) == (ed.MAX_IMPORTANCE_ROWS, ed.MAX_IMPORTANCE_ROWS, True)
    assert model.rows_seen and max(model.rows_seen) == ed.MAX_IMPORTANCE_ROWS
    assert sum(model.rows_seen) <= (1 + 5 * 3) * ed.MAX_IMPORTANCE_ROWS
    # the informative feature still ranks first, far above the noise
    assert fi["features"][0]["name"] == "signal" and fi["features"][0]["mean"] > 0.2
    assert all(abs(f["mean"]) < 0.02 for f in fi["features"][1:]), fi["features"]
    # the sample is the seeded one (sklearn's numbers on exactly those rows), and the same seed gives the same
    rows = ed.importance_rows(n, ed.MAX_IMPORTANCE_ROWS, 11)
    assert rows is not None and len(set(rows.tolist())) == ed.MAX_IMPORTANCE_ROWS
    ref = permutation_importance(
        model.model, X.iloc[rows], y.iloc[rows], scoring="accuracy", n_repeats=3, random_state=11
    )
    assert fi["features"][0]["mean"] == pytest.approx(float(ref.importances_mean[2]))
    assert ed.permutation_detail(model, X, y, ed.CLASSIFICATION, n_repeats=3, seed=11) == fi
    # a smaller cap through evaluation_detail is recorded the same way
    doc = ed.evaluation_detail(model.model, X.iloc[:3000], y.iloc[:3000], ed.CLASSIFICATION, max_importance_rows=500)
    assert (doc["featureImportance"]["rowsUsed"], doc["featureImportance"]["maxRows"]) == (500, 500)
    assert doc["nTest"] == 3000 and sum(sum(r) for r in doc["classification"]["confusionMatrix"]["matrix"]) == 3000


def test_a_holdout_within_the_cap_is_scored_whole() -> None:
    model, Xte, yte, task = fitted("wine")
    fi = ed.permutation_detail(model, Xte, yte, task, n_repeats=2)
    assert (fi["rowsUsed"], fi["sampled"]) == (len(Xte), False)
    assert ed.importance_rows(len(Xte), len(Xte), 0) is None
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        ed.importance_rows(10, 0, 0)
