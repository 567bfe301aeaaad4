"""``mpiml export``: a trained model as an ONNX graph (the ``onnx`` package), for
onnxruntime and the other ONNX runtimes (C, C++, C#, Java, JavaScript, ...).

Graph (ONNX opset :data:`OPSET`, standard ``ai.onnx`` operators only):

* input ``X``: (N, n_features), float32 (default) or float64;
* a model with a scaler first computes ``(X - scale_offset) / scale_factor`` (Sub, Div);
* linear models: ``scores = X @ coef.T + intercept`` (MatMul, Add); MLPs: the layers
  (MatMul, Add, Relu or Tanh) of the logical (unsplit) weights, whatever split
  trained them;
* classifiers: output ``label`` (N,) — the class labels, ``Gather`` of the classes by
  the argmax (or by ``scores > 0`` for one output), of the labels' own type: int64
  for integer labels, double for float labels, bool, or string — and, for log-loss
  and MLP classifiers, ``probabilities`` (N, n_classes) (Sigmoid for one output,
  Softmax otherwise); hinge models output ``scores`` instead of probabilities;
* regressors: output ``variable`` (N, 1).

A model fitted on a DataFrame with string column names carries them in the ONNX
model's ``metadata_props`` under the key ``feature_names`` (a JSON list, in the column
order of ``X``).
"""
import json

import numpy as np

__all__ = ["to_onnx", "export_onnx", "OPSET"]

OPSET = 17


def _layers(est):
    """[(W (n_in, n_out), b)] of the model, logical weights."""
    if hasattr(est, "_net"):
        coefs, intercepts = est.gather_params()
        return list(zip(coefs, intercepts)), est.activation
    coef, intercept = est.gather_coef() if hasattr(est, "gather_coef") else (est.coef_,
                                                                           est.intercept_)
    return [(np.atleast_2d(coef).T, np.asarray(intercept).ravel())], None


# the ONNX element type of the ``label`` output, by numpy kind of the checked classes
_LABEL_TYPES = {"i": "INT64", "f": "DOUBLE", "b": "BOOL", "U": "STRING"}


def _label_tensor(est):
    """``(classes as an ONNX-ready array, TensorProto element type name)``: the label
    output keeps the type the model was trained with."""
    from .io import check_labels
    classes = check_labels(est.classes_, f"the {type(est).__name__}'s classes_")
    kind = classes.dtype.kind
    if kind == "U":
        classes = np.array(classes.tolist(), dtype=object)
    return classes, _LABEL_TYPES[kind]


def _head(est, x, K, elem, np_dtype):
    """The classifier's output nodes after the scores ``x`` (K columns):
    ``(nodes, initializers, outputs)``."""
    from onnx import TensorProto, helper, numpy_helper
    classes, label_type = _label_tensor(est)
    inits = [numpy_helper.from_array(classes, "classes")]
    nodes = []
    probabilistic = hasattr(est, "_net") or getattr(est, "loss", None) == "log_loss"
    if K == 1:
        inits += [numpy_helper.from_array(np.zeros(1, dtype=np_dtype), "zero"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
        nodes += [helper.make_node("Greater", [x, "zero"], ["pos"]),
                  helper.make_node("Cast", ["pos"], ["idx2"], to=TensorProto.INT64),
                  helper.make_node("Squeeze", ["idx2", "axis1"], ["idx"])]
        if probabilistic:
            inits.append(numpy_helper.from_array(np.ones(1, dtype=np_dtype), "one"))
            nodes += [helper.make_node("Sigmoid", [x], ["p1"]),
                      helper.make_node("Sub", ["one", "p1"], ["p0"]),
                      helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
    else:
        nodes.append(helper.make_node("ArgMax", [x], ["idx"], axis=1, keepdims=0))
        if probabilistic:
            nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1))
    nodes.append(helper.make_node("Gather", ["classes", "idx"], ["label"], axis=0))
    outputs = [helper.make_tensor_value_info("label", getattr(TensorProto, label_type), [None])]
    if probabilistic:
        outputs.append(helper.make_tensor_value_info("probabilities", elem,
                                                     [None, len(classes)]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["scores"]))
        outputs.append(helper.make_tensor_value_info("scores", elem, [None, K]))
    return nodes, inits, outputs


def _body(est, layers, activation, np_dtype):
    """The nodes and initializers from ``X`` to the scores: ``(nodes, inits, scores name)``."""
    from onnx import helper, numpy_helper
    nodes, inits = [], []
    x = "X"
    if hasattr(est, "scale_offset_"):
        # the model's scaler first, the same operations as mpiml's predict
        inits += [numpy_helper.from_array(est.scale_offset_.astype(np_dtype), "scale_offset"),
                  numpy_helper.from_array(est.scale_factor_.astype(np_dtype), "scale_factor")]
        nodes += [helper.make_node("Sub", ["X", "scale_offset"], ["X_centred"]),
                  helper.make_node("Div", ["X_centred", "scale_factor"], ["X_scaled"])]
        x = "X_scaled"
    for i, (W, b) in enumerate(layers):
        inits += [numpy_helper.from_array(np.asarray(W, dtype=np_dtype), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, dtype=np_dtype), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"])]
        x = f"z{i}"
        if i < len(layers) - 1:
            op = "Relu" if activation == "relu" else "Tanh"
            nodes.append(helper.make_node(op, [x], [f"a{i}"]))
            x = f"a{i}"
    return nodes, inits, x


def to_onnx(est, dtype="float32"):
    """The ONNX ModelProto of a fitted mpiml estimator (collective for a split model)."""
    import onnx
    from onnx import TensorProto, helper

    np_dtype = np.dtype(dtype)
    if np_dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, not {dtype}")
    elem = TensorProto.FLOAT if np_dtype == np.float32 else TensorProto.DOUBLE
    layers, activation = _layers(est)
    d = layers[0][0].shape[0]
    nodes, inits, x = _body(est, layers, activation, np_dtype)
    if hasattr(est, "classes_"):
        more, more_inits, outputs = _head(est, x, layers[-1][0].shape[1], elem, np_dtype)
        nodes, inits = nodes + more, inits + more_inits
    else:
        nodes.append(helper.make_node("Identity", [x], ["variable"]))
        outputs = [helper.make_tensor_value_info("variable", elem, [None, 1])]
    graph = helper.make_graph(nodes, f"mpiml_{type(est).__name__}",
                              [helper.make_tensor_value_info("X", elem, [None, d])], outputs,
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mpiml")
    model.ir_version = 8
    names = getattr(est, "feature_names_in_", None)
    if names is not None:
        from .io import check_feature_names
        names = check_feature_names(names, d, f"the {type(est).__name__}'s feature_names_in_")
        helper.set_model_props(model, {"feature_names": json.dumps(names.tolist())})
    onnx.checker.check_model(model)
    return model


def export_onnx(est, path, dtype="float32", inputs=()):
    """Write ``to_onnx(est)`` to ``path`` (rank 0 writes; collective for a split model);
    ``inputs``: files ``path`` must not be (the model file it was read from)."""
    import onnx

    from .comm import get_comm
    from .io import check_output_path
    c = get_comm(est.comm)
    check_output_path(path, comm=c, inputs=inputs)
    model = to_onnx(est, dtype)
    if c.rank == 0:
        onnx.save(model, path)
    c.barrier()
    return path
