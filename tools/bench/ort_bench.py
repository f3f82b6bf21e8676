"""onnxruntime side of `hbs enclave bench`: the same model on the same inputs.

    python ort_bench.py MODEL.onnx INPUTS.f32 STUDIES SLICES ROWS COLS {2d|3d} THREADS

Reads STUDIES x SLICES x ROWS x COLS little-endian float32 values, runs the model once
per study (a batch of slices for 2D models, one volume for 3D), after one warm-up
study, with THREADS intra-op threads; prints {"seconds": ...} as JSON.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort

model, path = sys.argv[1], sys.argv[2]
studies, slices, rows, cols = (int(v) for v in sys.argv[3:7])
kind, threads = sys.argv[7], int(sys.argv[8])
x = np.fromfile(path, dtype="<f4").reshape(studies, slices, rows, cols)
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name


def feed(s):
    v = x[s][:, None] if kind == "2d" else x[s][None, None]
    return {name: v}


sess.run(None, feed(0))
t = time.perf_counter()
for s in range(studies):
    sess.run(None, feed(s))
print(json.dumps({"seconds": time.perf_counter() - t}))
