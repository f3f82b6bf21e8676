"""Searches hbs with the standard dicomweb-client (QIDO-RS), over mTLS.

usage: qido_client.py URL CA CERT KEY studies|series|instances [--study UID]
       [--series UID] [--limit N] [--offset N] [KEY=VALUE ...]
Prints {"status": 200, "results": [...]} (DICOM JSON), or {"status": N, "body": ...}.
"""
import json
import sys

import requests
from dicomweb_client.api import DICOMwebClient

url, ca, cert, key, level, *rest = sys.argv[1:]
opts = {"study": None, "series": None, "limit": None, "offset": None}
filters = {}
while rest:
    arg = rest.pop(0)
    if arg.startswith("--"):
        opts[arg[2:]] = rest.pop(0)
    else:
        k, v = arg.split("=", 1)
        filters[k] = v
session = requests.Session()
# REQUESTS_CA_BUNDLE in the environment would override session.verify (requests #3829).
session.trust_env = False
session.verify = ca
session.cert = (cert, key)
client = DICOMwebClient(url=url + "/dicomweb", session=session)
paging = {
    k: int(opts[k]) for k in ("limit", "offset") if opts[k] is not None
}
try:
    if level == "studies":
        res = client.search_for_studies(search_filters=filters, **paging)
    elif level == "series":
        res = client.search_for_series(
            study_instance_uid=opts["study"], search_filters=filters, **paging
        )
    else:
        res = client.search_for_instances(
            study_instance_uid=opts["study"],
            series_instance_uid=opts["series"],
            search_filters=filters,
            **paging,
        )
    print(json.dumps({"status": 200, "results": res}))
except requests.HTTPError as e:
    print(json.dumps({"status": e.response.status_code, "body": e.response.text}))
