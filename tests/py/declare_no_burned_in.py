"""Writes copies of image files that vault quarantines only because they do not say
whether their pixels carry burned-in text, now saying Burned In Annotation (0028,0301) NO,
as a site does after checking them.

pydicom's bundled JPEG baseline and deflated files are all Secondary Capture or
Ultrasound, classes vault holds back when (0028,0301) is absent; these copies let the
round-trip test reach those transfer syntaxes. pydicom writes them with the input's
transfer syntax (deflating again for a deflated one) and the pixel data bytes unchanged.

Job: {"inputs": [path, ...], "out_dir": path}
Out: {"written": [{"input": path, "output": path}], "skipped": [{"input", "why"}]}
"""

import os
import warnings

from hbs_dicom import emit, load_job, read, transfer_syntax

# The SOP classes vault treats as usually burned in (Secondary Capture, Ultrasound,
# US multi-frame, encapsulated documents, video endoscopic), by UID prefix.
USUALLY_BURNED_IN = (
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.6.",
    "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1",
)


def main():
    job = load_job()
    os.makedirs(job["out_dir"], exist_ok=True)
    written, skipped = [], []
    for path in job["inputs"]:
        try:
            ds = read(path)
            sop_class = str(ds.get("SOPClassUID", ""))
            if transfer_syntax(ds) is None:
                skipped.append({"input": path, "why": "no file meta"})
                continue
            if "PixelData" not in ds or "BurnedInAnnotation" in ds:
                skipped.append({"input": path, "why": "no pixel data or already declared"})
                continue
            if not sop_class.startswith(USUALLY_BURNED_IN):
                skipped.append({"input": path, "why": "class not held back"})
                continue
            ds.BurnedInAnnotation = "NO"
            dest = os.path.join(job["out_dir"], os.path.basename(path))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.save_as(dest)
            written.append({"input": path, "output": dest})
        except Exception as e:
            skipped.append({"input": path, "why": f"{type(e).__name__}: {e}"})
    emit({"written": written, "skipped": skipped})


if __name__ == "__main__":
    main()
