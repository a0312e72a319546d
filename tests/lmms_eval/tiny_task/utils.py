"""Hooks of the tiny local lmms-eval task (tiny_vqa.yaml)."""
from PIL import Image


def doc_to_visual(doc):
    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    # lmms-eval's llava model returns the decoded text unstripped; our eval scripts strip it
    return {"exact_match": float(results[0].strip() == doc["answer"].strip())}
