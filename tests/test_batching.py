"""``chunk=None``: images per forward pass chosen by the device and the image size (interpbench.ops.batching)."""

from __future__ import annotations

import pytest
import torch
from test_causal import IMAGENET_MEAN, IMAGENET_STD, TinyConvNet, wrap

import interpbench as ib
from interpbench.core.base import ComponentError
from interpbench.ops.batching import auto_chunk, check_chunk, resolve_chunk

# the methods that send many perturbed copies of each image through the model, at small work parameters
CHUNKED = {
    "occlusion": {"window": 56},
    "rise": {"num_masks": 12},
    "scorecam": {},
    "integrated_gradients": {"steps": 6},
    "smoothgrad": {"samples": 6},
    "mask": {"iterations": 1},
}


def test_auto_chunk_by_device_and_image_size():
    assert auto_chunk("cpu", 224, 224, gpu=256) == 4  # four 224 px images' pixels per pass on a CPU
    assert auto_chunk("cpu", 64, 64, gpu=256) == 49
    assert auto_chunk("cpu", 2000, 2000, gpu=256) == 1
    assert auto_chunk(torch.device("cuda"), 224, 224, gpu=256) == 256 and auto_chunk("cuda:1", 64, 64, gpu=64) == 64
    images = torch.zeros(2, 3, 112, 112)
    assert resolve_chunk(None, images, gpu=256) == 16 and resolve_chunk(5, images, gpu=256) == 5


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_a_bad_chunk_names_the_component_and_the_accepted_values(bad):
    with pytest.raises(ComponentError, match=r"scorecam: parameter chunk must be a positive integer .* or None"):
        check_chunk("scorecam", bad)
    for name in [*CHUNKED, "deletion", "insertion"]:
        with pytest.raises(ComponentError, match=rf"{name}: .*chunk"):
            (ib.load_metric if name in ("deletion", "insertion") else ib.load_method)(name, chunk=bad)


@pytest.fixture(scope="module")
def model_224():
    torch.manual_seed(0)
    return wrap(TinyConvNet(), mean=IMAGENET_MEAN, std=IMAGENET_STD, size=(224, 224), classes=5)


@pytest.mark.parametrize("name", list(CHUNKED))
def test_methods_default_to_the_auto_chunk_and_it_does_not_change_the_maps(name, model_224):
    sizes: list[int] = []
    handle = model_224.net.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 3])
    try:
        assert ib.load_method(name).params["chunk"] is None
        torch.manual_seed(0)
        auto = ib.load_method(name, **CHUNKED[name]).explain(model_224, images, targets)
        auto_sizes, sizes[:] = list(sizes), []
        torch.manual_seed(0)
        fixed = ib.load_method(name, **CHUNKED[name], chunk=9).explain(model_224, images, targets)
    finally:
        handle.remove()
    # on the CPU at 224 px: at most 4 images per pass (the 2-image passes are the batch's own, e.g. the targets')
    assert max(auto_sizes) == 4, auto_sizes
    assert 4 < max(sizes) <= 9, sizes  # some methods take whole blocks of the 2 images
    torch.testing.assert_close(auto, fixed, rtol=1e-4, atol=1e-6)
