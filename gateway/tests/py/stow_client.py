"""Stores DICOM files through hbs with the standard dicomweb-client, over mTLS.

usage: stow_client.py URL CA CERT KEY [--study UID] FILE...
Prints the Store Instances response as DICOM JSON, or {"error": ..., "status": N}.
"""
import json
import sys

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

url, ca, cert, key, *rest = sys.argv[1:]
study = None
if rest[:1] == ["--study"]:
    study, rest = rest[1], rest[2:]
session = requests.Session()
# REQUESTS_CA_BUNDLE in the environment would override session.verify (requests #3829).
session.trust_env = False
session.verify = ca
session.cert = (cert, key)
client = DICOMwebClient(url=url + "/dicomweb", session=session)
datasets = [pydicom.dcmread(f) for f in rest]
try:
    resp = client.store_instances(datasets=datasets, study_instance_uid=study)
    print(json.dumps({"status": 200, "response": resp.to_json_dict()}))
except requests.HTTPError as e:
    body = e.response.text
    print(json.dumps({"status": e.response.status_code, "body": body}))
