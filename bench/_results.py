"""Writing a bench script's report: one JSON file, its folder made if needed."""

import json
import os

__all__ = ["write_json"]


def write_json(report, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
        out.write("\n")
    print(f"wrote {path}")
