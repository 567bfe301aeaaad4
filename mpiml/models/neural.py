"""Multi-layer perceptrons: data-parallel by default, tensor-parallel with
``model_parallel=K`` (see :mod:`mpiml.parallel.network`)."""
import math

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin

from ..comm import get_comm, get_grid
from ..errors import DataError, NotFittedError
from ..parallel.network import (ACTIVATIONS, OUTPUT_LOSSES, MLPEngine, Network, output_loss,
                                output_targets)
from ..parallel.protocol import N_WORDS
from ..io import first_nonfinite_row
from .base import check_predict_X, label_index
from .scaling import restore_scaler, transform
from .training import Trainer

__all__ = ["MLPClassifier", "MLPRegressor", "load_mlp"]

_RESUMED_PARAMS = ("hidden_layer_sizes", "activation", "solver", "alpha", "batch_size",
                   "learning_rate", "learning_rate_init", "power_t", "momentum",
                   "nesterovs_momentum", "beta_1", "beta_2", "epsilon", "tol",
                   "n_iter_no_change", "dtype", "scaler")


class _BaseMLP(Trainer):
    _resumed_params = _RESUMED_PARAMS
    _shap_method = "kernel"         # Kernel SHAP of the outputs (mpiml.explain)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=1e-4, batch_size=200, learning_rate="constant", learning_rate_init=1e-3,
                 power_t=0.5, max_iter=200, tol=1e-4, n_iter_no_change=10, momentum=0.9,
                 nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 random_state=None, verbose=0, dtype=None, checkpoint_dir=None,
                 checkpoint_every=None, checkpoint_seconds=None, keep_checkpoints=3,
                 comm_timeout=600.0, model_parallel=1, sync="allreduce", sync_warmup=0,
                 max_staleness=4, overlap=False, compress="none", stats=None, run_dir=None,
                 scaler=None, comm=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.keep_checkpoints = keep_checkpoints
        self.comm_timeout = comm_timeout
        self.model_parallel = model_parallel
        self.sync = sync
        self.sync_warmup = sync_warmup
        self.max_staleness = max_staleness
        self.overlap = overlap
        self.compress = compress
        self.stats = stats
        self.run_dir = run_dir
        self.scaler = scaler
        self.comm = comm

    # ------------------------------------------------------------ validation
    def _hidden(self):
        h = self.hidden_layer_sizes
        h = (h,) if isinstance(h, (int, np.integer)) else tuple(h)
        return tuple(int(v) for v in h)

    def _validate_model_params(self, bad):
        try:
            hidden = self._hidden()
        except (TypeError, ValueError):
            hidden = None
        if not hidden or any(isinstance(v, bool) or v < 1 for v in hidden):
            bad(f"hidden_layer_sizes must be positive integers, not {self.hidden_layer_sizes!r}")
        if self.activation not in ACTIVATIONS:
            bad(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.solver not in ("sgd", "adam"):
            bad(f"unknown solver {self.solver!r}; choose 'sgd' or 'adam'")
        if self.learning_rate not in ("constant", "invscaling"):
            bad(f"learning_rate must be 'constant' or 'invscaling', not {self.learning_rate!r}")
        for name in ("alpha", "learning_rate_init", "power_t", "momentum", "beta_1", "beta_2",
                     "epsilon"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(f"{name} must be a finite number, not {v!r}")
        if self.alpha < 0:
            bad(f"alpha must be >= 0, not {self.alpha}")
        if self.learning_rate_init <= 0:
            bad(f"learning_rate_init must be > 0, not {self.learning_rate_init}")
        if not 0.0 <= self.momentum < 1.0:
            bad(f"momentum must be in [0, 1), not {self.momentum}")
        if not (0.0 <= self.beta_1 < 1.0 and 0.0 <= self.beta_2 < 1.0) or self.epsilon <= 0:
            bad("beta_1 and beta_2 must be in [0, 1) and epsilon > 0")
        if self.model_parallel > 1 and hidden and len(hidden) >= 1:
            small = [h for i, h in enumerate(hidden) if i % 2 == 0 and h < self.model_parallel]
            if small:
                bad(f"model_parallel={self.model_parallel} splits hidden layers of "
                    f"{small[0]} units: every split layer needs at least one unit per rank")

    # ------------------------------------------------------------ engine
    def _make_engine(self, X, y, K, output, d, grid, columns, seed, live):
        if columns is not None:
            raise DataError("columns= is for feature-sharded linear models; MLP ranks read "
                            "all the features")
        lr, momentum, alpha = (float(live.get(k, getattr(self, k)))
                               for k in ("learning_rate_init", "momentum", "alpha"))
        hyper = dict(solver=self.solver, learning_rate=self.learning_rate,
                     learning_rate_init=lr, power_t=float(self.power_t), momentum=momentum,
                     nesterovs_momentum=bool(self.nesterovs_momentum), beta_1=float(self.beta_1),
                     beta_2=float(self.beta_2), epsilon=float(self.epsilon), alpha=alpha,
                     seed=seed)
        return MLPEngine(X, y, [d, *self._hidden(), K], self.activation, output, grid, hyper,
                         N_WORDS)

    def _store(self, engine, K, d):
        # a network of the estimator's own: the engine's network stays bound to the
        # engine's parameters (re-binding it to this snapshot, as an epoch's validation
        # did, froze the training at the snapshot)
        src = engine.net
        self._net = Network(src.sizes, src.activation, src.output, src.model, src.dtype)
        self._params = engine.params.copy()
        self._slots = [s.copy() for s in engine.slots]
        self._net.bind(self._params, np.zeros_like(self._params))
        self._set_public(K, d)

    def _set_public(self, K, d):
        """coefs_ / intercepts_ hold the logical weights when the model is not split;
        a split model keeps its shards (``gather_params()`` assembles them)."""
        for name in ("coefs_", "intercepts_"):
            self.__dict__.pop(name, None)
        self.n_outputs_ = K
        self.n_layers_ = len(self._net.layers) + 1
        if self._net.model.size == 1:
            self.coefs_ = [layer.W.astype(np.float64) for layer in self._net.layers]
            self.intercepts_ = [layer.b.astype(np.float64) for layer in self._net.layers]

    def _fitted_state(self):
        return {"shard": self._params, "shard_slots": self._slots}

    def gather_params(self):
        """The logical ``(coefs, intercepts)`` lists on every rank (collective over the
        model-parallel group)."""
        self._check_fitted()
        if hasattr(self, "coefs_"):
            return self.coefs_, self.intercepts_
        net = self._net
        flat = net.gather(self._params)
        flat = net.model.bcast(flat)
        coefs, intercepts, pos = [], [], 0
        for a, b in zip(net.sizes[:-1], net.sizes[1:]):
            coefs.append(flat[pos:pos + a * b].reshape(a, b))
            pos += a * b
            intercepts.append(flat[pos:pos + b])
            pos += b
        return coefs, intercepts

    # ------------------------------------------------------------ prediction
    def _check_fitted(self):
        if not hasattr(self, "_net"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def _forward(self, X):
        """Output-layer values of this rank's rows (collective over the model-parallel
        group when the model is split; its ranks pass the same rows)."""
        self._check_fitted()
        X = check_predict_X(self, X)
        # an activation may turn a NaN into a number (relu): scan the rows, which costs
        # little beside a forward pass
        row = first_nonfinite_row(X) if X.size else None
        if row is not None:
            raise DataError(f"Input X contains NaN or infinity (local row {row})")
        X = np.ascontiguousarray(transform(self, X), dtype=self._net.dtype)
        out = np.empty((X.shape[0], self._net.sizes[-1]))
        for s in range(0, max(X.shape[0], 1), 4096):
            out[s:s + 4096] = self._net.forward(X[s:s + 4096])
        return out

    def _replicas(self):
        return self._net.model.size

    def _global(self, c, X, y):
        """(global mean loss, rows, local outputs, local y) -- collective."""
        def local():
            yy = np.asarray(y) if self._is_classifier else np.asarray(y, dtype=np.float64)
            yy = yy.ravel()
            if yy.shape[0] != np.asarray(X).shape[0]:
                raise DataError(f"X has {np.asarray(X).shape[0]} rows but y has {yy.shape[0]}")
            return yy, self._encode(yy)

        yy, (K, y_enc, output) = c.run(local)
        out = self._forward(X)
        loss = _loss_sum(out, y_enc, output)
        tot = c.allreduce(np.array([loss, float(len(yy))])) / self._replicas()
        return tot[0] / max(tot[1], 1.0), int(round(tot[1])), out, yy

    def save(self, path):
        """Write the model with its logical weights (collective; rank 0 writes)."""
        coefs, intercepts = self.gather_params()
        arrays = {}
        for i, (W, b) in enumerate(zip(coefs, intercepts)):
            arrays[f"coef_{i}"] = W
            arrays[f"intercept_{i}"] = b
        if hasattr(self, "classes_"):
            arrays["classes"] = self.classes_
        self._write_model(path, arrays, params={"hidden_layer_sizes": list(self._hidden())},
                          attrs={"n_layers": len(coefs), "output": self._net.output})


def _loss_sum(out, y_enc, output):
    """The summed data loss of output-layer values (the training engine's loss)."""
    return output_loss(OUTPUT_LOSSES[output](), out, output_targets(output, y_enc))[0]


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by minibatch SGD or Adam across ranks.

    scikit-learn's ``MLPClassifier`` parameters and meanings (``hidden_layer_sizes``,
    ``activation`` relu/tanh, ``solver`` sgd/adam, ``alpha``, ``batch_size``,
    ``learning_rate`` constant/invscaling, ``learning_rate_init``, ``power_t``,
    ``max_iter`` (epochs), ``tol``, ``n_iter_no_change``, ``momentum``,
    ``nesterovs_momentum``, ``beta_1``, ``beta_2``, ``epsilon``, ``random_state``),
    plus mpiml's: ``batch_size`` is the global batch over all ranks; ``dtype``;
    ``checkpoint_dir`` / ``checkpoint_every`` / ``checkpoint_seconds`` /
    ``keep_checkpoints``; ``comm_timeout``; ``model_parallel``; ``scaler``
    (None, ``"standard"`` or ``"minmax"``: global feature scaling fitted on the
    training rows, kept in ``scale_offset_`` / ``scale_factor_``, stored in the model
    file and applied to raw rows by every prediction path); ``comm``.

    Two classes give one logistic output, more a softmax. With ``model_parallel=K``
    the hidden layers are split over ``K`` consecutive ranks in column-/row-parallel
    pairs; those ranks pass the same rows.

    Attributes
    ----------
    coefs_, intercepts_ : lists of ndarray
        Logical weights (``n_in x n_out``), when ``model_parallel == 1``; a split
        model keeps its shards, see :meth:`gather_params`.
    classes_, n_iter_, loss_curve_ (mean data loss per epoch, without the L2 term),
    n_features_in_, n_outputs_, n_layers_

    Examples
    --------
    >>> from mpiml import MLPClassifier, load_hdf5                 # doctest: +SKIP
    >>> X, y = load_hdf5("circles.h5")                             # doctest: +SKIP
    >>> clf = MLPClassifier((64, 64), max_iter=20, random_state=0).fit(X, y)  # doctest: +SKIP
    >>> clf.score(X, y)                                            # doctest: +SKIP
    """
    _is_classifier = True

    def _encode(self, y):
        return self._encode_agreed(label_index(self.classes_, y))

    def _encode_agreed(self, idx, reuse=False):
        idx = np.asarray(idx)
        if len(self.classes_) == 2:
            return 1, idx.astype(np.float64, copy=not reuse), "logistic"
        return len(self.classes_), idx.astype(np.float64, copy=not reuse), "softmax"

    def predict_proba(self, X):
        """Class probabilities of this rank's rows (local, or collective over the
        model-parallel group)."""
        z = self._forward(X)
        if z.shape[1] == 1:
            p = 0.5 * (1.0 + np.tanh(0.5 * z[:, 0]))
            return np.column_stack([1.0 - p, p])
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict(self, X):
        """Class labels of this rank's rows."""
        z = self._forward(X)
        idx = (z[:, 0] > 0).astype(np.intp) if z.shape[1] == 1 else np.argmax(z, axis=1)
        return self.classes_[idx]

    def metrics(self, X, y):
        """Global accuracy, mean loss and row count (collective)."""
        c = get_comm(self.comm)
        loss, n, z, yy = self._global(c, X, y)
        idx = (z[:, 0] > 0).astype(np.intp) if z.shape[1] == 1 else np.argmax(z, axis=1)
        correct = c.allreduce(float(np.sum(self.classes_[idx] == yy))) / self._replicas()
        return {"accuracy": correct / max(n, 1), "loss": loss, "n_samples": n}

    def score(self, X, y):
        """Global mean accuracy (collective)."""
        return self.metrics(X, y)["accuracy"]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (squared error); parameters as
    :class:`MLPClassifier`.

    Examples
    --------
    >>> from mpiml import MLPRegressor, load_hdf5                  # doctest: +SKIP
    >>> X, y = load_hdf5("reg.h5")                                 # doctest: +SKIP
    >>> reg = MLPRegressor((32,), max_iter=50, random_state=0).fit(X, y)  # doctest: +SKIP
    """

    def _encode(self, y):
        return 1, y, "identity"

    def predict(self, X):
        """Predicted values of this rank's rows."""
        return self._forward(X)[:, 0]

    def metrics(self, X, y):
        """Global R², mean loss, mean squared error and row count (collective)."""
        c = get_comm(self.comm)
        loss, n, z, yy = self._global(c, X, y)
        pred = z[:, 0]
        k = self._replicas()
        s = c.allreduce(np.array([yy.sum(), float(yy.size)])) / k
        mean = s[0] / max(s[1], 1.0)
        ss = c.allreduce(np.array([np.sum((yy - pred) ** 2), np.sum((yy - mean) ** 2)])) / k
        r2 = 1.0 - ss[0] / ss[1] if ss[1] > 0 else (1.0 if ss[0] == 0 else 0.0)
        return {"r2": float(r2), "loss": loss, "mse": ss[0] / max(n, 1), "n_samples": n}

    def score(self, X, y):
        """Global R² (collective)."""
        return self.metrics(X, y)["r2"]


MLP_TYPES = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}


def load_mlp(model_type, params, arrays, attrs, comm=None, model_parallel=1):
    """Build a fitted MLP from the contents of a model file (any split, any ranks)."""
    cls = MLP_TYPES[model_type]
    valid = set(cls._param_names())
    est = cls(**{k: (tuple(v) if k == "hidden_layer_sizes" else v)
                 for k, v in params.items() if k in valid})
    est.comm = comm
    est.model_parallel = model_parallel
    grid = get_grid(comm, model_parallel)
    get_comm(comm).run(est._validate_params)
    n = int(attrs["n_layers"])
    coefs = [np.asarray(arrays[f"coef_{i}"]) for i in range(n)]
    # the shapes agree with hidden_layer_sizes: persist.check_contents checked them
    sizes = [coefs[0].shape[0]] + [W.shape[1] for W in coefs]
    dtype = np.dtype(est.dtype) if est.dtype is not None else np.dtype(np.float64)
    net = Network(sizes, est.activation, str(attrs["output"]), grid.model, dtype)
    logical = np.concatenate([np.concatenate([np.ravel(coefs[i]),
                                              np.ravel(arrays[f"intercept_{i}"])])
                              for i in range(n)])
    est._params = np.zeros(net.P, dtype=dtype)
    net.scatter(logical, est._params)
    net.bind(est._params, np.zeros_like(est._params))
    est._net = net
    est._slots = []
    if "classes" in arrays:
        est.classes_ = np.asarray(arrays["classes"])
    est.n_features_in_ = int(attrs["n_features_in"])
    est.n_iter_ = int(attrs.get("n_iter", 0))
    restore_scaler(est, arrays, attrs)
    est._set_public(sizes[-1], sizes[0])
    return est
