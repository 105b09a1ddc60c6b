#!/usr/bin/env python3
"""Writes a tiny ImageNet-shaped ONNX classifier: [N,3,224,224] -> [N,1000] probabilities.

    python3 scripts/make_tiny_model.py OUT.onnx

A real ONNX file ONNX Runtime loads and runs like any classifier (global average pool, one dense
layer with fixed pseudo-random weights, softmax), but it costs microseconds, so that a
measurement of the queue (scripts/redis_ceiling.py) is not a measurement of a model.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(18)
    weights = numpy_helper.from_array(rng.standard_normal((3, 1000)).astype(np.float32), "weights")
    bias = numpy_helper.from_array(np.zeros(1000, dtype=np.float32), "bias")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weights", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 1000])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tandem")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    main()
