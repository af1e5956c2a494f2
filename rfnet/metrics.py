"""Evaluation metrics of RFNet (paper Table 1): P/R/F1/AP on Available, per-class F1, confusion matrix.

Pure numpy, so tests can pin exact values. ``Available`` (index 0) is the positive class (docs/paper.md
§8, Q2); P/R/F1 use the decision rule ``P(Available) >= threshold``, per-class F1 and the
confusion matrix use the argmax over the six labels.
"""

from __future__ import annotations

import numpy as np

from rfnet.config import LABELS


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum, ``sum_n (R_n - R_{n-1}) P_n`` (sklearn's AP).

    Tied scores form one threshold. Returns NaN when there is no positive.
    """
    positive = np.asarray(positive, bool)
    scores = np.asarray(scores, np.float64)
    n_pos = positive.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall_f1(positive: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    positive, predicted = np.asarray(positive, bool), np.asarray(predicted, bool)
    tp = float(np.sum(positive & predicted))
    p = tp / max(predicted.sum(), 1)
    r = tp / max(positive.sum(), 1)
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return float(p), float(r), float(f1)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n: int = len(LABELS)) -> np.ndarray:
    """(n, n) int64; rows are true labels, columns predictions."""
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predicted)), 1)
    return cm


def calibrate_threshold(p_available: np.ndarray, is_available: np.ndarray, target_precision: float) -> float | None:
    """The lowest threshold whose precision on Available reaches ``target_precision`` (over at least 10
    accepted samples); None when none does, so the caller can say so rather than pass a default off as
    calibrated."""
    p_available, is_available = np.asarray(p_available, np.float64), np.asarray(is_available, bool)
    for t in np.unique(p_available):  # ascending: the first hit keeps the most recall
        keep = p_available >= t
        if keep.sum() >= 10 and is_available[keep].mean() >= target_precision:
            return float(t)
    return None


def evaluate(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """All metrics for a split.

    Args:
        probabilities: (N, 6) softmax outputs in ``LABELS`` order.
        labels: (N,) int true labels.
        threshold: decision threshold on P(Available).

    Returns:
        A JSON-ready dict: ``n``, ``threshold``, ``precision``/``recall``/``f1``/``ap`` on Available,
        ``accuracy`` and ``macro_f1`` of the argmax, ``per_class_f1`` (label -> F1), ``confusion_matrix``
        (rows true, columns predicted, ``LABELS`` order) and ``support`` (label -> count).
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    positive = labels == 0
    p_avail = probabilities[:, 0]
    precision, recall, f1 = precision_recall_f1(positive, p_avail >= threshold)
    argmax = probabilities.argmax(axis=1)
    cm = confusion_matrix(labels, argmax)
    per_class = {}
    for i, name in enumerate(LABELS):
        per_class[name] = precision_recall_f1(labels == i, argmax == i)[2]
    present = [per_class[n] for i, n in enumerate(LABELS) if (labels == i).any()]
    return {
        "n": int(len(labels)),
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ap": average_precision(positive, p_avail),
        "accuracy": float((argmax == labels).mean()) if len(labels) else float("nan"),
        "macro_f1": float(np.mean(present)) if present else float("nan"),
        "per_class_f1": per_class,
        "confusion_matrix": cm.tolist(),
        "support": {n: int((labels == i).sum()) for i, n in enumerate(LABELS)},
    }
