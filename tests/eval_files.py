"""Writers of the small hand-made files the evaluation tests feed to scorers and converters."""
import json
import os

SUFFIX = "\nAnswer the question using a single word or phrase."


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def write_json(path, obj):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def read_json(path):
    with open(path) as f:
        return json.load(f)
