"""Builds the small ONNX models hbs ships for its compute enclave (compute/models/).

The weights are set by hand, not trained: each model computes a known function of the
image, so that tests can check the enclave's metrics against values computed
independently (onnxruntime on the same pixels, in Python). They are shaped like the
models ProstateNET runs (a classifier with a feature layer for transfer learning, a 2D
and a 3D U-Net-like segmenter), small enough to keep in the repository.

    .venv/bin/python tools/models/make_models.py compute/models gateway/tests/fixtures

Needs the `onnx` and `numpy` packages. The output is deterministic: running it again
gives the same bytes, so the SHA-256 in the model cards and tests stays put.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SIZE = 128  # every model takes 128x128 slices (the card says how to resample)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def save(model, out: Path, card: dict):
    model.ir_version = 8
    model.producer_name = "hbs tools/models/make_models.py"
    model.producer_version = "1"
    onnx.checker.check_model(model)
    out.with_suffix(".onnx").write_bytes(model.SerializeToString())
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


def classifier(out: Path):
    """csPCa classifier on the highest-b diffusion slice.

    The lesion of clinically significant cancer is the brightest spot of a high-b
    image. A 3x3 mean removes noise; four ReLU units measure how far the brightest
    point rises above 0.2, 0.3, 0.4 and 0.5 (the features, frozen, for transfer
    learning); a logistic unit on the last two gives the probability.
    """
    x = helper.make_tensor_value_info("dwi", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    prob = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])
    feats = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("Conv", ["dwi", "w_mean"], ["smooth"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["smooth", "w1", "b1"], ["levels"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["levels"], ["above"]),
        helper.make_node("GlobalMaxPool", ["above"], ["peak"]),
        helper.make_node("Flatten", ["peak"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "w2", "b2"], ["logit"], transB=1),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    inits = [
        const("w_mean", np.full((1, 1, 3, 3), 1.0 / 9.0)),
        const("w1", np.ones((4, 1, 1, 1))),
        const("b1", [-0.2, -0.3, -0.4, -0.5]),
        const("w2", [[0.0, 0.0, 12.0, 12.0]]),
        const("b2", [-2.5]),
    ]
    graph = helper.make_graph(nodes, "cspca_dwi_classifier", [x], [prob, feats], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    save(model, out, {
        "name": "cspca-dwi-classifier",
        "version": "1.0.0",
        "scenario": "detection of clinically significant prostate cancer (ISUP >= 2)",
        "task": "classifier",
        "inputs": [{"name": "dwi", "sequence": "DWI", "b_value": "highest",
                    "shape": [1, SIZE, SIZE], "scale": 0.001}],
        "outputs": {"score": "prob", "features": "features"},
        "aggregate": "max over slices",
        "label": "isup_grade >= 2",
    })


def unet_nodes(dims: int):
    """The U-Net-like lesion segmenter's graph on T2W, 2D or 3D.

    Fine path: how dark the 3x3 mean is, ReLU(0.75 - mean), as one convolution
    (weights -1/9, bias 0.75). Written as Sub(0.75, Conv(...)), tract 0.23.9 computes
    it wrongly (the tests caught it: the masks disagreed with onnxruntime's).
    Coarse path (the encoder): a 4x4 mean pool, a 3x3 mean, how bright the surrounding
    is (ReLU(mean - 0.8): the gland), decoded back up by nearest-neighbour resizing.

    The means are convolutions and the decoder a Resize, not AveragePool with padding
    and ConvTranspose: the same function, in the operators tract runs fast (measured:
    with the first form tract ran the 2D model at a quarter of onnxruntime's speed).
    The skip connection meets the decoder in a product (dark inside bright: the
    lesion), then a logistic unit gives the per-pixel probability.
    """
    k3 = [1] * (dims - 4) + [3, 3]
    k4 = [1] * (dims - 4) + [4, 4]
    pad1 = ([0] * (dims - 4) + [1, 1]) * 2
    shape_w = lambda k: [1, 1] + k
    return [
        helper.make_node("Conv", ["t2", "w_dark", "b_dark"], ["dark_in"], kernel_shape=k3,
                         pads=pad1),
        helper.make_node("Relu", ["dark_in"], ["dark"]),
        helper.make_node("AveragePool", ["t2"], ["down"], kernel_shape=k4, strides=k4),
        helper.make_node("Conv", ["down", "w_ctx"], ["ctx"], kernel_shape=k3, pads=pad1),
        helper.make_node("Sub", ["ctx", "bright_level"], ["bright_in"]),
        helper.make_node("Relu", ["bright_in"], ["bright"]),
        helper.make_node("Resize", ["bright", "", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Mul", ["dark", "up"], ["gate"]),
        helper.make_node("Mul", ["gate", "gain"], ["gained"]),
        helper.make_node("Sub", ["gained", "offset"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["mask"]),
    ], [
        const("w_dark", np.full(shape_w(k3), -1.0 / 9.0)),
        const("b_dark", [0.75]),
        const("bright_level", 0.8),
        const("w_ctx", np.full(shape_w(k3), 1.0 / 9.0)),
        const("scales", [1.0, 1.0] + [float(k) for k in k4]),
        const("gain", 200.0),
        const("offset", 3.0),
    ]


def segmenter(out: Path, dims: int):
    if dims == 4:
        shape = ["N", 1, SIZE, SIZE]
    else:
        shape = ["N", 1, "D", SIZE, SIZE]
    x = helper.make_tensor_value_info("t2", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, shape)
    nodes, inits = unet_nodes(dims)
    name = "lesion_unet2d" if dims == 4 else "lesion_unet3d"
    graph = helper.make_graph(nodes, name, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    save(model, out, {
        "name": "lesion-unet-2d" if dims == 4 else "lesion-unet-3d",
        "version": "1.0.0",
        "scenario": "index lesion segmentation",
        "task": "segmenter",
        "inputs": [{"name": "t2", "sequence": "T2W",
                    "shape": [1, SIZE, SIZE] if dims == 4 else [1, "slices", SIZE, SIZE],
                    "scale": 0.001}],
        "outputs": {"mask": "mask"},
        "threshold": 0.5,
        "reference": "SEG segment: lesion",
    })


def hostile(out: Path):
    """A test fixture, not a model: a "classifier" that tiles its input to about 100 GB
    before reducing it, as a malicious or broken model might. The enclave must contain
    it (memory limits) and report it, and the gateway must keep serving."""
    x = helper.make_tensor_value_info("dwi", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    prob = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])
    nodes = [
        helper.make_node("Tile", ["dwi", "repeats"], ["huge"]),
        helper.make_node("ReduceMax", ["huge", "axes"], ["peak"], keepdims=0),
        helper.make_node("Sigmoid", ["peak"], ["prob"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 1, 256, 256], dtype=np.int64), "repeats"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(nodes, "hostile_alloc", [x], [prob], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    save(model, out, {
        "name": "hostile-alloc",
        "version": "0.0.1",
        "scenario": "test fixture: a model that allocates without bound",
        "task": "classifier",
        "inputs": [{"name": "dwi", "sequence": "DWI", "b_value": "highest",
                    "shape": [1, SIZE, SIZE], "scale": 0.001}],
        "outputs": {"score": "prob"},
    })


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "compute/models")
    out.mkdir(parents=True, exist_ok=True)
    classifier(out / "cspca-dwi-classifier")
    segmenter(out / "lesion-unet-2d", 4)
    segmenter(out / "lesion-unet-3d", 5)
    fixtures = Path(sys.argv[2] if len(sys.argv) > 2 else "gateway/tests/fixtures")
    fixtures.mkdir(parents=True, exist_ok=True)
    hostile(fixtures / "hostile-alloc")


if __name__ == "__main__":
    main()
