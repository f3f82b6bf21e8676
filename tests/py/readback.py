"""Reads vault's outputs back with pydicom and compares their pixel data with the inputs.

Job: {"pairs": [{"input": path, "output": path}, ...]}
Out: {"results": [{"output", "error", "ts_in", "ts_out", "pixel": [...]}, ...]}

For each output: dcmread, then every element at any depth is converted and rendered
(sequences included), which is where a malformed value or length shows. Pixel data
(7FE0,0010), and float/double pixel data when present, are compared as the bytes stored
in the files, native or encapsulated, so "byte for byte" means exactly that.
"""

import traceback

from hbs_dicom import PIXEL_TAGS, emit, load_job, raw_value, read, transfer_syntax


def full_walk(ds):
    n = 0
    for el in ds.iterall():
        repr(el.value)
        str(el)
        n += 1
    for el in ds.file_meta.iterall():
        repr(el.value)
        n += 1
    return n


def main():
    job = load_job()
    results = []
    for pair in job["pairs"]:
        r = {"output": pair["output"], "error": None, "ts_in": None, "ts_out": None, "pixel": []}
        try:
            src = read(pair["input"])
            r["ts_in"] = transfer_syntax(src)
            pix_in = {int(t): raw_value(src, t)[0] for t in PIXEL_TAGS}
        except Exception as e:  # the input is pydicom's own test file; report, not crash
            r["error"] = f"input unreadable by pydicom: {type(e).__name__}: {e}"
            results.append(r)
            continue
        try:
            out = read(pair["output"])
            r["ts_out"] = transfer_syntax(out)
            r["elements"] = full_walk(out)
            for t in PIXEL_TAGS:
                a = pix_in[int(t)]
                b = raw_value(out, t)[0]
                if a is None and b is None:
                    continue
                r["pixel"].append(
                    {
                        "tag": f"({t.group:04X},{t.element:04X})",
                        "in_len": None if a is None else len(a),
                        "out_len": None if b is None else len(b),
                        "equal": a is not None and b is not None and bytes(a) == bytes(b),
                    }
                )
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e} | " + traceback.format_exc(limit=3).replace("\n", " ")
        results.append(r)
    emit({"results": results})


if __name__ == "__main__":
    main()
