"""Lists the identifying values of input files, for the test that none survives.

Job: {"pairs": [{"input": path, "output": path}, ...]}
Out: {"results": [{"input", "output", "identifiers": [{"attr", "hex"}],
                   "pixel_ranges": [[start, end], ...], "pixel_in_inflated",
                   "kept": [hex, ...], "error"}]}

Values are the bytes stored in the input (hex in the JSON, so any character set goes
through unchanged), taken at any depth, sequences included:
- every PN value of 4 bytes or more, and each of its components (split at '=' and '^')
  of 3 bytes or more;
- Patient ID, Other Patient IDs, Accession Number, Study ID, Institution Name and
  Address, Station Name, Device Serial Number, and a few more attributes of the same
  kind (institutional department, patient address and telephone, issuer of patient ID);
- every DA value (each date of a range too) and every DT value of 8 bytes or more, and
  the date part of a DT;
- every UI value not under the DICOM root 1.2.840.10008 and not in an attribute that
  names a class, a transfer syntax or a coding scheme (those identify no one);
all of 4 bytes or more unless said otherwise. The output's pixel data ranges are given
too: pixels must be identical to the input's (the round-trip test checks that), so a
value that happens to occur inside them is not a leak of an attribute. So are the
input's Manufacturer and Manufacturer's Model Name values ("kept"): the profile keeps
them (they name a vendor and a model, not a person or a place) and hbs needs them, so a
removed value that merely coincides with part of them (MR_small.dcm's Institution Name
is "TOSHIBA", its Manufacturer "TOSHIBA_MEC") is not a leak; the removed attribute
itself is still caught if it is left anywhere else.
"""

from hbs_dicom import emit, load_job, pixel_ranges, read, walk

NAMED = {
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "DeviceSerialNumber",
    "InstitutionalDepartmentName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "IssuerOfPatientID",
}

# UI attributes whose values name a class, a transfer syntax, a coding scheme or an
# implementation (software), never a patient, a study or an instance.
CLASS_UIDS = {
    "SOPClassUID",
    "MediaStorageSOPClassUID",
    "ReferencedSOPClassUID",
    "ReferencedSOPClassUIDInFile",
    "RelatedGeneralSOPClassUID",
    "OriginalSpecializedSOPClassUID",
    "SOPClassesInStudy",
    "CodingSchemeUID",
    "TransferSyntaxUID",
    "ReferencedTransferSyntaxUIDInFile",
    "ImplementationClassUID",
}


def values(raw):
    for v in raw.split(b"\\"):
        v = v.strip(b" \x00")
        if v:
            yield v


def encode(el):
    v = el.value
    if v is None:
        return b""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return b"\\".join(str(x).encode("utf-8", "replace") for x in v)
    return str(v).encode("utf-8", "replace")


KEPT_DEVICE = {"Manufacturer", "ManufacturerModelName"}


def identifiers(path):
    """(identifying values, kept device values) of one input."""
    found = []
    kept = set()

    def add(attr, v, minimum=4):
        # A value of delimiters only ("^^^^", an empty name) identifies no one.
        if len(v) >= minimum and any(chr(c).isalnum() for c in v):
            found.append({"attr": attr, "hex": v.hex()})

    def visit(_ds, _tag, el, raw, where):
        vr = el.VR
        if el.keyword in KEPT_DEVICE and raw is not None:
            kept.update(v.hex() for v in values(bytes(raw)))
        if vr not in ("PN", "DA", "DT", "UI") and el.keyword not in NAMED:
            return
        data = raw if raw is not None else encode(el)
        if not isinstance(data, (bytes, bytearray)):
            return
        for v in values(bytes(data)):
            if vr == "PN":
                add(where, v)
                for group in v.split(b"="):
                    for part in group.split(b"^"):
                        add(where + " (name component)", part.strip(), 3)
            elif vr == "DA":
                for d in v.split(b"-"):
                    add(where, d.strip(), 8)
            elif vr == "DT":
                add(where, v, 8)
                add(where + " (date part)", v[:8], 8)
            elif vr == "UI":
                if el.keyword in CLASS_UIDS or v.startswith(b"1.2.840.10008"):
                    continue
                add(where, v)
            else:
                add(where, v)

    ds = read(path)
    walk(ds.file_meta, visit, "FileMeta.")
    walk(ds, visit)
    seen, out = set(), []
    for f in found:
        key = (f["attr"], f["hex"])
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out, sorted(kept)


def main():
    job = load_job()
    results = []
    for pair in job["pairs"]:
        r = {"input": pair["input"], "output": pair["output"], "identifiers": [],
             "pixel_ranges": [], "pixel_in_inflated": False, "kept": [],
             "error": None}
        try:
            r["identifiers"], r["kept"] = identifiers(pair["input"])
            r["pixel_ranges"], r["pixel_in_inflated"] = pixel_ranges(pair["output"])
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"
        results.append(r)
    emit({"results": results})


if __name__ == "__main__":
    main()
