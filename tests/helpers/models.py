"""Models the registry tests build: the labels of small fitted pipelines, and a type skops does not trust."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

LABELS = ["neutral", "happy", "sad", "angry"]


class Sneaky(BaseEstimator, ClassifierMixin):
    """A class skops does not know: loading it would run this module's code."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self
