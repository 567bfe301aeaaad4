"""Classification metrics computed exactly across ranks (each rank holds its rows).

Counts are reduced with Allreduce, so precision, recall, F1, balanced accuracy, the
confusion matrix and the log-loss are exact. ROC-AUC is exact too (not binned): it
is the fraction of (positive, negative) pairs ranked correctly, ties counted half,
and every rank counts, for its positives, the negatives of every rank below (and
equal to) each score: the sorted negative scores travel once around a ring of the
ranks, so no rank ever holds more than one rank's negatives.
"""
import numpy as np
from mpi4py import MPI

from .comm import get_comm

__all__ = ["confusion_matrix", "classification_metrics", "roc_auc", "log_loss"]


def _label(cl):
    v = float(cl)
    return str(int(v)) if v.is_integer() else str(v)


def confusion_matrix(y_true_idx, y_pred_idx, n_classes, comm=None):
    """Global K x K counts: row = true class, column = predicted class (collective)."""
    c = get_comm(comm)
    m = np.zeros(n_classes * n_classes, dtype=np.int64)
    np.add.at(m, np.asarray(y_true_idx, np.int64) * n_classes + np.asarray(y_pred_idx, np.int64), 1)
    if c.size > 1:
        c.mpi.Allreduce(MPI.IN_PLACE, m, op=MPI.SUM)
    return m.reshape(n_classes, n_classes)


def _pair_counts(pos, neg, comm):
    """2 * #(neg < pos) + #(neg == pos) over all pairs of every rank's positive and
    negative scores, exactly (int64), by a ring pass of the sorted negatives."""
    c = comm
    pos = np.sort(np.asarray(pos, dtype=np.float64))
    block = np.sort(np.asarray(neg, dtype=np.float64))
    total = 0
    for step in range(c.size):
        if pos.size and block.size:
            lo = np.searchsorted(block, pos, side="left")
            hi = np.searchsorted(block, pos, side="right")
            total += int(2 * lo.sum() + (hi - lo).sum())
        if c.size == 1 or step == c.size - 1:
            break
        # pass the block to the next rank, receive from the previous one
        nxt, prv = (c.rank + 1) % c.size, (c.rank - 1) % c.size
        n_in = c.mpi.sendrecv(block.size, dest=nxt, source=prv)
        incoming = np.empty(n_in, dtype=np.float64)
        c.mpi.Sendrecv(block, dest=nxt, recvbuf=incoming, source=prv)
        block = incoming
    return c.allreduce(total)


def roc_auc(scores, positive, comm=None):
    """Exact ROC-AUC of ``scores`` for the boolean ``positive`` labels (collective).
    Returns nan when one class has no rows anywhere."""
    c = get_comm(comm)
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos = c.allreduce(int(positive.sum()))
    n_neg = c.allreduce(int((~positive).sum()))
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    twice = _pair_counts(scores[positive], scores[~positive], c)
    return twice / (2.0 * n_pos * n_neg)


def log_loss(proba, y_idx, comm=None, eps=1e-15):
    """Global mean negative log-likelihood of the true classes (collective)."""
    c = get_comm(comm)
    p = np.clip(np.asarray(proba, dtype=np.float64)[np.arange(len(y_idx)), y_idx], eps, 1.0)
    tot = c.allreduce(np.array([-np.log(p).sum(), float(len(y_idx))]))
    return tot[0] / max(tot[1], 1.0)


def classification_metrics(y_true_idx, y_pred_idx, classes, proba=None, scores=None, comm=None):
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, the confusion
    matrix, and with ``proba`` the log-loss and ROC-AUC (binary: of the positive class's
    score; multiclass: the macro average of one-vs-rest AUCs). Collective."""
    c = get_comm(comm)
    K = len(classes)
    cm = confusion_matrix(y_true_idx, y_pred_idx, K, c)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    n = cm.sum()
    out = {"accuracy": float(tp.sum() / max(n, 1)),
           "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
           "per_class": {_label(cl):
                         {"precision": float(precision[k]), "recall": float(recall[k]),
                          "f1": float(f1[k]), "support": int(support[k])}
                         for k, cl in enumerate(classes)},
           "confusion_matrix": cm.tolist(), "n_samples": int(n)}
    if proba is not None:
        out["log_loss"] = log_loss(proba, y_true_idx, c)
        if K == 2:
            s = scores if scores is not None else np.asarray(proba)[:, 1]
            out["roc_auc"] = roc_auc(s, np.asarray(y_true_idx) == 1, c)
        else:
            aucs = [roc_auc(np.asarray(proba)[:, k], np.asarray(y_true_idx) == k, c)
                    for k in range(K)]
            out["roc_auc"] = float(np.nanmean(aucs))
            out["roc_auc_per_class"] = [float(a) for a in aucs]
    return out
