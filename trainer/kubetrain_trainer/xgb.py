"""xgboost's classifier, made to take labels of any type like every other classifier in the catalogue.

``xgboost.XGBClassifier`` accepts only labels ``0..k-1`` ("Invalid classes inferred from unique values of
`y`"); scikit-learn's classifiers take strings, booleans, any integers. This subclass encodes the labels
with a ``LabelEncoder`` for ``fit`` and answers ``predict``/``classes_`` in the original labels, so metrics,
thresholds, the saved pipeline and ``verify``'s smoke prediction treat it like the rest. Parameters and
``get_params`` are xgboost's own (its ``get_params`` is built for subclasses), so searches use the same
names. Imported only when a spec names ``xgboost``: this module needs the library.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.preprocessing import LabelEncoder
from xgboost import XGBClassifier


class XGBLabelClassifier(XGBClassifier):
    """``XGBClassifier`` for labels of any type (encoded for fit, decoded for predict)."""

    def fit(self, X: Any, y: Any, **kwargs: Any) -> XGBLabelClassifier:
        # During fit xgboost compares its own 0..k-1 classes_; drop the encoder of an earlier fit first.
        self.__dict__.pop("label_encoder_", None)
        encoder = LabelEncoder().fit(y)
        super().fit(X, encoder.transform(y), **kwargs)
        self.label_encoder_ = encoder
        return self

    @property
    def classes_(self) -> np.ndarray:
        encoder = self.__dict__.get("label_encoder_")
        if encoder is None:
            return super().classes_
        return encoder.classes_

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:
        codes = np.asarray(super().predict(X, **kwargs)).astype(np.int64)
        return self.label_encoder_.inverse_transform(codes)
