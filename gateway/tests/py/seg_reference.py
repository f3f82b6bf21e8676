"""Independent reference for the enclave's segmenter metrics: reads the original
(identifiable) synthetic corpus with pydicom, runs the same ONNX model with onnxruntime,
and prints the mean Dice of the lesion masks against each DICOM SEG, as JSON.

    python seg_reference.py CORPUS MODEL.onnx {2d|3d}
"""

import glob
import json
import sys

import numpy as np
import onnxruntime as ort
import pydicom

corpus, model, kind = sys.argv[1], sys.argv[2], sys.argv[3]
sess = ort.InferenceSession(model)
dices = []
for patient in sorted(glob.glob(f"{corpus}/*/*/")):
    segs = sorted(glob.glob(f"{patient}study-*/series-9901/*.dcm"))
    if not segs:
        continue
    seg = pydicom.dcmread(segs[0])
    study = segs[0].split("/series-9901/")[0]
    t2 = []
    for f in glob.glob(f"{study}/series-*/*.dcm"):
        ds = pydicom.dcmread(f, force=True)
        if ds.Modality == "MR" and "T2" in str(ds.get("SeriesDescription", "")).upper():
            t2.append(ds)
    t2.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    rows, cols = int(t2[0].Rows), int(t2[0].Columns)
    x = np.stack([
        (ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1))
         + float(ds.get("RescaleIntercept", 0)))
        .reshape(128, rows // 128, 128, cols // 128).mean(axis=(1, 3)) * 0.001
        for ds in t2
    ])
    x = x[:, None] if kind == "2d" else x[None, None]
    pred = sess.run(None, {"t2": x})[0].reshape(len(t2), 128, 128) >= 0.5
    pred = pred.repeat(rows // 128, axis=1).repeat(cols // 128, axis=2)
    frames = seg.pixel_array.reshape(-1, rows, cols)
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(t2)}
    ref = np.zeros_like(pred)
    for i, g in enumerate(seg.PerFrameFunctionalGroupsSequence):
        if g.SegmentIdentificationSequence[0].ReferencedSegmentNumber != 2:
            continue
        src = g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ref[index[src]] |= frames[i] > 0
    total = pred.sum() + ref.sum()
    if total:
        dices.append(2.0 * float((pred & ref).sum()) / float(total))
print(json.dumps({"n": len(dices), "dice": sum(dices) / len(dices) if dices else None}))
