"""Helpers shared by the pydicom scripts of the hbs end-to-end tests.

Every script takes a JSON job file as its only argument and writes one JSON document to
stdout; diagnostics go to stderr. Nothing here depends on hbs: pydicom is the
independent reader the tests check vault's output against.
"""

import json
import sys
import warnings

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

PIXEL_TAGS = (Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))
DEFLATED = "1.2.840.10008.1.2.1.99"


def load_job():
    with open(sys.argv[1], encoding="utf-8") as f:
        return json.load(f)


def emit(doc):
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")


def read(path):
    """Reads a Part 10 file; warnings about odd values are not errors here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(ts) if ts is not None else None


def raw_value(ds, tag):
    """The value bytes of an element as stored in the file (before conversion)."""
    el = ds.get_item(tag)
    if el is None:
        return None, None
    if isinstance(el, RawDataElement):
        return el.value, el.value_tell
    v = el.value
    return (v if isinstance(v, (bytes, bytearray)) else None), None


def pixel_ranges(path):
    """Byte ranges [start, end) of the pixel data values of the top-level data set, and
    whether they count from the start of the inflated data set (deflated transfer
    syntax: pydicom reads it from an inflated buffer) rather than of the file."""
    ds = read(path)
    out = []
    for tag in PIXEL_TAGS:
        value, tell = raw_value(ds, tag)
        if value is not None and tell is not None:
            out.append([tell, tell + len(value)])
    return out, transfer_syntax(ds) == DEFLATED


def walk(ds, visit, path=""):
    """Calls visit(ds, tag, element, raw_bytes, path) for every element at any depth,
    taking the stored bytes before pydicom converts the element."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        raw_bytes = raw.value if isinstance(raw, RawDataElement) else None
        el = ds[tag]
        name = el.keyword or str(el.tag)
        here = f"{path}{name}"
        if el.VR == "SQ":
            for i, item in enumerate(el.value or []):
                walk(item, visit, f"{here}[{i}].")
            continue
        visit(ds, tag, el, raw_bytes, here)
