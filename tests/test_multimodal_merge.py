"""prepare_inputs_labels_for_multimodal: where image features land, with every padding/merge variant."""
import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tests.helpers import make_tiny_llava

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def make_model(vision_path, merge="flat", **config):
    return make_tiny_llava(vision_path, merge, **config)


def run(model, ids, images, pad=0, **kw):
    ids = torch.tensor(ids)
    mask = ids != pad
    labels = ids.clone()
    labels[labels == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    labels[~mask] = IGNORE_INDEX
    with torch.no_grad():
        return model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images, **kw)


def embed(model, ids):
    with torch.no_grad():
        return model.get_model().embed_tokens(torch.tensor(ids))


def features(model, images):
    with torch.no_grad():
        return model.encode_images(images)


def test_right_padding_places_features_and_labels(vision_path):
    model = make_model(vision_path)
    images = torch.randn(2, 3, 336, 336)
    ids = [[1, 5, IMAGE_TOKEN_INDEX, 6, 7], [1, IMAGE_TOKEN_INDEX, 9, 0, 0]]
    _, pos, mask, _, emb, labels = run(model, ids, images)
    feats = features(model, images)
    assert emb.shape == (2, 4 + 576, 32)
    torch.testing.assert_close(emb[0, :2], embed(model, [1, 5]))
    torch.testing.assert_close(emb[0, 2:578], feats[0])
    torch.testing.assert_close(emb[0, 578:], embed(model, [6, 7]))
    assert labels[0, :2].tolist() == [1, 5] and labels[0, 578:].tolist() == [6, 7]
    assert (labels[0, 2:578] == IGNORE_INDEX).all()
    # Sample 1 has 2 real text tokens + 576: right-padded by two.
    torch.testing.assert_close(emb[1, 1:577], feats[1])
    assert mask[1].tolist() == [True] * 578 + [False] * 2
    assert pos is None  # caller passed none


def test_left_padding(vision_path):
    model = make_model(vision_path, tokenizer_padding_side="left")
    images = torch.randn(2, 3, 336, 336)
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7], [1, IMAGE_TOKEN_INDEX, 9, 0, 0]])
    mask = ids != 0
    with torch.no_grad():
        _, pos, mask_out, _, emb, labels = model.prepare_inputs_labels_for_multimodal(
            ids, torch.arange(5).expand(2, 5), mask, None, None, images)
    assert labels is None
    assert mask_out[1].tolist() == [False] * 2 + [True] * 578
    assert pos[1, 2:].tolist() == list(range(578)) and pos[0].tolist() == list(range(580))
    torch.testing.assert_close(emb[1, 3:579], features(model, images)[1])
    torch.testing.assert_close(emb[1, -1], embed(model, [9])[0])


def test_text_only_sample_in_multimodal_batch(vision_path):
    model = make_model(vision_path)
    images = torch.randn(3, 3, 336, 336)  # the collator's dummy image for the text-only sample in the middle
    ids = [[1, IMAGE_TOKEN_INDEX, 4], [1, 8, 9, 10], [1, IMAGE_TOKEN_INDEX, 5]]
    padded = [x + [0] * (4 - len(x)) for x in ids]
    _, _, mask, _, emb, labels = run(model, padded, images)
    feats = features(model, images)
    assert int(mask[1].sum()) == 4
    torch.testing.assert_close(emb[1, :4], embed(model, [1, 8, 9, 10]))
    torch.testing.assert_close(emb[2, 1:577], feats[2])  # not the dummy's features
    # Without dummy images (one image per <image>) the batch is also understood.
    _, _, _, _, emb2, _ = run(model, padded, images[[0, 2]])
    torch.testing.assert_close(emb2, emb)


def test_two_images_in_one_sample(vision_path):
    model = make_model(vision_path)
    images = torch.randn(2, 3, 336, 336)
    _, _, mask, _, emb, labels = run(model, [[1, IMAGE_TOKEN_INDEX, 7, IMAGE_TOKEN_INDEX, 8]], images)
    feats = features(model, images)
    assert emb.shape[1] == 3 + 2 * 576
    torch.testing.assert_close(emb[0, 1:577], feats[0])
    torch.testing.assert_close(emb[0, 577], embed(model, [7])[0])
    torch.testing.assert_close(emb[0, 578:1154], feats[1])
    assert labels[0].tolist()[577] == 7 and labels[0].tolist()[-1] == 8


def test_truncation_at_tokenizer_model_max_length(vision_path):
    model = make_model(vision_path, tokenizer_model_max_length=300)
    _, _, mask, _, emb, labels = run(model, [[1, 5, IMAGE_TOKEN_INDEX, 6]], torch.randn(1, 3, 336, 336))
    assert emb.shape[1] == 300 and labels.shape[1] == 300 and mask.all()


def test_image_count_mismatch_is_an_error(vision_path):
    model = make_model(vision_path)
    with pytest.raises(ValueError, match="images"):
        run(model, [[1, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX, 4]], torch.randn(3, 3, 336, 336))


def test_decode_step_and_no_images_pass_through(vision_path):
    model = make_model(vision_path)
    ids = torch.tensor([[5]])
    out = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, torch.randn(1, 3, 336, 336))
    assert out[0] is ids and out[4] is None
    ids = torch.tensor([[1, 5, 6]])
    assert model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, None)[4] is None


def test_anyres_spatial_unpad_keeps_the_merge_intact(vision_path):
    from PIL import Image

    from llava.mm_utils import process_images

    model = make_model(vision_path, merge="spatial_unpad", image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS)
    processor = model.get_vision_tower().image_processor
    # 700x300 fits 1008x336 best (scale 1.12 keeps all 210,000 pixels): 3 crops wide, 1 high.
    image = Image.new("RGB", (700, 300), (200, 30, 30))
    pixels = process_images([image], processor, model.config)
    pixels = pixels[0] if isinstance(pixels, list) else pixels[0]
    assert pixels.shape == (4, 3, 336, 336)  # base + 3 crops
    _, _, _, _, emb, labels = run(model, [[1, IMAGE_TOKEN_INDEX, 4]], [pixels], image_sizes=[image.size])
    # The merged grid is 24 rows x 72 columns; the image filled int(700*24/300)=56 columns of it, centred,
    # so unpadding keeps columns 8..63, and each row ends with the newline token.
    rows, cols = 24, 56
    n_image = 576 + rows * (cols + 1)
    assert emb.shape[1] == 2 + n_image
    feats = features(model, pixels)  # [4, 576, D]
    torch.testing.assert_close(emb[0, 1:577], feats[0])
    grid = emb[0, 577:577 + rows * (cols + 1)].view(rows, cols + 1, -1)
    newline = model.get_model().image_newline
    torch.testing.assert_close(grid[:, -1], newline.expand(rows, -1))
    crops = feats[1:].view(3, 24, 24, -1)
    torch.testing.assert_close(grid[0, :16], crops[0, 0, 8:24])
    torch.testing.assert_close(grid[5, 16:40], crops[1, 5])
    torch.testing.assert_close(grid[3, 40:56], crops[2, 3, :16])
    assert (labels[0, 1:1 + n_image] == IGNORE_INDEX).all()
