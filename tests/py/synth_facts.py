"""Reads synthetic corpus files (inputs and de-identified outputs) with pydicom and
reports the facts the synthetic-corpus tests assert on, one entry per file.

Job: {"files": [path, ...]}
Out: {"results": [{"path", "error", "elements", "attrs": {keyword: str|null},
                   "private": {"gggg,CREATOR,ee": {"vr", "value"}|null},
                   "creators": ["gggg,CREATOR", ...], "csa": ["(gggg,eeee)", ...],
                   "philips_sq": [{"tag", "vr", "items": [...]}],
                   "method_codes": [str], "ref_series": [str], "ref_instances": [str],
                   "derivation_sources": [str]}]}

Every file is read in full (every element at any depth converted and rendered), so an
output pydicom cannot read, or reads only in part, is reported as "error" (and has no
other facts). Values are
pydicom's str() of the converted value: the same value padded differently compares
equal, a changed value does not.
"""

import traceback

from hbs_dicom import emit, load_job, read

ATTRS = (
    "Modality",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "SeriesDescription",
    "ProtocolName",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "EchoTime",
    "RepetitionTime",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientIdentityRemoved",
    "ImageType",
    "DiffusionBValue",
)

# (group, private creator, element byte): the vendors' diffusion elements.
PRIVATE = (
    (0x0019, "SIEMENS MR HEADER", 0x0C),
    (0x0019, "SIEMENS MR HEADER", 0x0E),
    (0x0043, "GEMS_PARM_01", 0x39),
    (0x2001, "Philips Imaging DD 001", 0x03),
    (0x2001, "Philips Imaging DD 001", 0x04),
)

PHILIPS_MR = "PHILIPS MR IMAGING DD 001"


def text(v):
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


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


def creators(ds):
    """Private creators of this level: (group, block byte) -> creator, upper-cased."""
    out = {}
    for el in ds:
        g, e = el.tag.group, el.tag.element
        if g % 2 == 1 and 0x10 <= e <= 0xFF and isinstance(el.value, str):
            out[(g, e)] = el.value.strip().upper()
    return out


def private_value(ds, group, creator, elem):
    for (g, block), c in creators(ds).items():
        if g == group and c == creator.upper():
            el = ds.get((group << 16) | (block << 8) | elem)
            if el is None:
                return None
            return {"vr": el.VR, "value": text(el.value)}
    return None


def item_facts(item):
    facts = {"tags": [f"({t.group:04X},{t.element:04X})" for t in item.keys()]}
    for kw in ("PatientName", "PatientID", "StudyDate", "SeriesInstanceUID"):
        facts[kw] = str(item[kw].value) if kw in item else None
    cr = creators(item)
    facts["private_creators"] = sorted(cr.values())
    facts["private"] = [
        f"({t.group:04X},{t.element:04X}) {cr.get((t.group, t.element >> 8), '?')}"
        for t in item.keys()
        if t.group % 2 == 1 and t.element >= 0x1000
    ]
    return facts


def facts(ds):
    r = {}
    r["attrs"] = {kw: (text(ds[kw].value) if kw in ds else None) for kw in ATTRS}
    if r["attrs"]["PatientName"] is not None:
        r["attrs"]["PatientName"] = str(ds.PatientName)
    r["private"] = {
        f"{g:04X},{c},{e:02X}": private_value(ds, g, c, e) for g, c, e in PRIVATE
    }
    cr = creators(ds)
    r["creators"] = sorted(f"{g:04X},{c}" for (g, _), c in cr.items())
    r["csa"] = [
        f"({t.group:04X},{t.element:04X})"
        for t in ds.keys()
        if t.group == 0x0029 and t.element >= 0x1000 and (t.element & 0xFF) in (0x10, 0x20)
    ]
    sq = []
    for t in ds.keys():
        if t.group == 0x2005 and t.element >= 0x1000 and (t.element & 0xFF) == 0x80:
            if cr.get((0x2005, t.element >> 8)) != PHILIPS_MR:
                continue
            el = ds[t]
            items = el.value if el.VR == "SQ" else None
            sq.append(
                {
                    "tag": f"({t.group:04X},{t.element:04X})",
                    "vr": el.VR,
                    "items": None if items is None else [item_facts(i) for i in items],
                    "raw_hex": text(el.value) if items is None else None,
                }
            )
    r["philips_sq"] = sq
    r["method_codes"] = [
        str(i.CodeValue) for i in ds.get("DeidentificationMethodCodeSequence", []) or []
    ]
    r["ref_series"], r["ref_instances"], r["derivation_sources"] = [], [], []
    for s in ds.get("ReferencedSeriesSequence", []) or []:
        r["ref_series"].append(text(s.SeriesInstanceUID) if "SeriesInstanceUID" in s else None)
        for i in s.get("ReferencedInstanceSequence", []) or []:
            r["ref_instances"].append(text(i.ReferencedSOPInstanceUID))
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []) or []:
        for d in frame.get("DerivationImageSequence", []) or []:
            for s in d.get("SourceImageSequence", []) or []:
                r["derivation_sources"].append(text(s.ReferencedSOPInstanceUID))
    return r


def main():
    job = load_job()
    results = []
    for path in job["files"]:
        try:
            ds = read(path)
            elements = full_walk(ds)
        except Exception as e:
            tb = traceback.format_exc(limit=3).replace("\n", " ")
            results.append({"path": path, "error": f"{type(e).__name__}: {e} | {tb}"})
            continue
        # A failure past this point is a bug of this script, not of the file: it stops
        # the script, and the test, with the traceback.
        r = facts(ds)
        r.update(path=path, error=None, elements=elements)
        results.append(r)
    emit({"results": results})


if __name__ == "__main__":
    main()
