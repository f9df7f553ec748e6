"""Our eval transform equals PaddleClas's deploy-time preprocessing ops, bit for bit, on real photos.

(PaddleClas's ``deploy/python/preprocess.py`` imports Paddle, so this lives on the interop side.)
"""

import numpy as np
import paddleclas_reference
import pytest
import skimage.data

import vitjax
from vitjax.data.transforms import preprocess_eval

PHOTOS = {
    "astronaut": skimage.data.astronaut(),
    "chelsea": skimage.data.chelsea(),
    "coffee": skimage.data.coffee(),
    "rocket": skimage.data.rocket(),
}


@pytest.mark.parametrize("model_name", ["DeiT_base_patch16_224", "DeiT_base_patch16_384", "TNT_small"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_eval_transform_equals_paddleclas_ops_on_real_photos(model_name, photo):
    ops = paddleclas_reference.load_deploy_preprocess()
    t = vitjax.get_spec(model_name).eval_transform
    image = PHOTOS[photo]
    expected = ops.ResizeImage(resize_short=t.resize_short, interpolation="bicubic", backend="pil")(image)
    expected = ops.CropImage(size=t.crop_size)(expected)
    expected = ops.NormalizeImage(scale=1.0 / 255.0, mean=list(t.mean), std=list(t.std), order="")(expected)
    ours = preprocess_eval(image, t)
    assert ours.dtype == np.float32 and ours.shape == (t.crop_size, t.crop_size, 3)
    np.testing.assert_array_equal(ours, expected)
