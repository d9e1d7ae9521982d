"""The shipped examples stay valid (with placeholder libraries, as the demo lays them)."""

from __future__ import annotations

import json5

from reconciler.configdir import DirectoryReader
from tests.conftest import copy_examples


def test_examples_are_valid_configs(ws, examples_dir):
    copy_examples(examples_dir, ws)
    for config in ws.conf.glob("*.json*"):
        library = ws.conf / json5.loads(config.read_text())["libpath"]
        library.parent.mkdir(parents=True, exist_ok=True)
        library.write_bytes(b"placeholder")
    desired = DirectoryReader().read(ws.conf)
    assert desired.invalid == ()
    assert {p.name for p in desired.plugins} == {"postgres", "staking-rewards", None}
