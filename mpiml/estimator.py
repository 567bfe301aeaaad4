"""The estimator contract every mpiml model and transformer follows: scikit-learn's.

The constructor only stores parameters; fitted state ends in ``_``; ``get_params`` /
``set_params`` read the constructor's signature; ``__sklearn_tags__`` tells
scikit-learn what kind of estimator this is, so ``clone``, ``Pipeline``,
``cross_val_score`` and the searches take mpiml's estimators.

scikit-learn is imported only when scikit-learn asks for the tags (it is then loaded
already): importing it costs about 1 s per process here (measured: 1.29 s for
``import sklearn.base`` against 0.24 s for numpy + scipy.sparse), which every rank of
every job would pay at start-up.
"""
import inspect

__all__ = ["BaseEstimator", "ALIASES", "param_name"]

# command-line / ``mpiml ctl`` names of estimator parameters, (the linear models' name,
# the MLPs' name); ``lr`` is the learning rate of either family. ``mpiml tune --grid``
# takes both forms, ``mpiml ctl set`` the short ones.
ALIASES = {"lr": ("eta0", "learning_rate_init"),
           "lr_schedule": ("learning_rate", "learning_rate"),
           "hidden": ("hidden_layer_sizes", "hidden_layer_sizes"),
           "scale": ("scaler", "scaler"), "seed": ("random_state", "random_state")}


def param_name(name, mlp):
    """The estimator parameter a command-line name stands for (``name`` itself if none)."""
    pair = ALIASES.get(name)
    return pair[1 if mlp else 0] if pair else name


class BaseEstimator:
    _estimator_kind = None      # "classifier" | "regressor" | "transformer"

    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    @classmethod
    def _get_param_names(cls):      # scikit-learn's name
        return cls._param_names()

    def get_params(self, deep=True):
        """Parameters of this estimator (a dict)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set parameters; returns ``self``."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid: {', '.join(valid)}")
            setattr(self, key, value)
        return self

    @property
    def _estimator_type(self):      # scikit-learn < 1.6 reads this attribute
        return self._estimator_kind

    def __sklearn_tags__(self):
        from sklearn.base import BaseEstimator as SkBase
        from sklearn.utils import ClassifierTags, RegressorTags, TransformerTags
        tags = SkBase().__sklearn_tags__()          # scikit-learn's defaults
        kind = self._estimator_kind
        if kind == "classifier":
            tags.estimator_type, tags.classifier_tags = "classifier", ClassifierTags()
        elif kind == "regressor":
            tags.estimator_type, tags.regressor_tags = "regressor", RegressorTags()
        elif kind == "transformer":
            tags.transformer_tags = TransformerTags()
            tags.target_tags.required = False
        if kind in ("classifier", "regressor"):
            tags.target_tags.required = True
        return tags

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k != "comm")
        return f"{type(self).__name__}({args})"
