"""The floor a reconciler is measured against: one Python process with a requests.Session
doing exactly the HTTP calls a change needs, and nothing else.

    python bench/floor.py list  URL TOKEN_FILE
    python bench/floor.py apply URL TOKEN_FILE CONFIG_DIR
"""

import os
import sys

import requests

mode, url, token_file = sys.argv[1:4]
session = requests.Session()
with open(token_file) as handle:
    session.headers["Authorization"] = "Bearer " + handle.read().strip()
base = f"{url}/v2/mainnet/slipstream/plugins"
session.get(base).raise_for_status()
if mode == "apply":
    directory = sys.argv[4]
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json5"):
            answer = session.post(base, json={"config_file": os.path.join(directory, name)})
            answer.raise_for_status()
