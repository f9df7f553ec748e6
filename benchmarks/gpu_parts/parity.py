"""Part 2, the parity sweep: every model's logits on the GPU against the CPU (fp32), and bf16's
top-1 against fp32's on real photos.

Tolerances, as max |logits_gpu - logits_cpu| / max |logits_cpu| over a batch of random images:

* ``highest`` (``jax.default_matmul_precision("float32")``, true fp32 matmuls): ``1e-4``. Both
  sides compute in fp32; what differs is the order of summation in matmuls and reductions, and
  the GPU's own exp/erf, each worth a few fp32 ulps (1.2e-7) per op, grown over 12 to 24 blocks.
* ``default`` (XLA's default precision for fp32 dots: on Ampere and newer GPUs TF32, with a
  10-bit mantissa, unit roundoff 4.9e-4 per product): ``1e-2``. The job also measures whether
  the default precision is TF32 (a 1024^3 matmul at both precisions) and says so.

The bf16 check: the same weights with ``dtype=bfloat16`` (bf16 compute, fp32 parameters) on
scikit-image's photos and their mirror images, each model's own eval transform. With random
weights the top-1 margins can be tiny, so an image counts as *decisive* when its fp32 margin
(top-1 minus top-2 logit) exceeds twice the largest |bf16 - fp32| logit difference on that
image; every decisive image must agree, and the agreement over all images is reported beside it.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.gpu_parts.common import Recorder, Sizes, error_text

TOLERANCES = {"highest": 1e-4, "default": 1e-2}
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "brick",
    "grass",
    "gravel",
    "moon",
    "clock",
)


def photos(count: int) -> tuple[list[np.ndarray], list[str]]:
    """``count`` RGB uint8 photos shipped with scikit-image (gray ones as 3 channels), then their mirror images."""
    import skimage.data

    images, names = [], []
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        images.append(np.ascontiguousarray(image[..., :3]))
        names.append(name)
    base = len(images)
    while len(images) < count:
        i = len(images) - base
        images.append(np.ascontiguousarray(images[i % base][:, ::-1]))
        names.append(names[i % base] + " (mirrored)")
    return images[:count], names[:count]


def tf32_in_use(device) -> tuple[bool, float]:
    """Whether fp32 matmuls at the default precision lose bits against ``highest`` on ``device``."""
    import jax
    import jax.numpy as jnp

    a = jax.device_put(np.random.RandomState(0).standard_normal((1024, 1024)).astype(np.float32), device)
    default = np.asarray(jax.jit(lambda m: m @ m)(a))
    with jax.default_matmul_precision("float32"):
        exact = np.asarray(jax.jit(lambda m: jnp.matmul(m, m))(a))
    rel = float(np.abs(default - exact).max() / np.abs(exact).max())
    return rel > 1e-5, rel


def run(args: dict, rec: Recorder, sizes: Sizes) -> None:
    import jax
    import jax.numpy as jnp

    import vitjax
    from benchmarks.worker import images as random_images
    from vitjax.data.transforms import preprocess_eval

    cpu = jax.devices("cpu")[0]
    accel = jax.devices()[0]
    stand_in = accel.platform == "cpu"
    tf32, tf32_rel = tf32_in_use(accel)
    rec.write(
        {
            "item": "setup",
            "device": f"{accel.platform}: {accel.device_kind}",
            "stand_in": stand_in,
            "default_precision_is_tf32": tf32,
            "default_vs_highest_matmul_rel": tf32_rel,
            "tolerances": TOLERANCES,
        }
    )
    pics, pic_names = photos(sizes.photos)
    for name in sizes.parity_models:
        if rec.left() < 5:
            rec.write({"item": "model", "model": name, "skipped": "the part's time budget ran out"})
            continue
        start = time.perf_counter()
        try:
            spec = vitjax.get_spec(name)
            size = spec.img_size
            model = vitjax.create_model(name)
            with jax.default_device(cpu):
                variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
            x = np.ascontiguousarray(random_images(sizes.parity_batch, size).transpose(0, 2, 3, 1))
            forward = jax.jit(model.apply)
            ref = np.asarray(forward(variables, jax.device_put(x, cpu)), np.float64)
            on_accel = jax.device_put(variables, accel)
            x_accel = jax.device_put(x, accel)
            errors = {}
            for precision in ("default", "highest"):
                if precision == "highest":
                    with jax.default_matmul_precision("float32"):
                        out = np.asarray(jax.jit(model.apply)(on_accel, x_accel), np.float64)
                else:
                    out = np.asarray(forward(on_accel, x_accel), np.float64)
                errors[precision] = float(np.abs(out - ref).max() / np.abs(ref).max())
            # bf16 against fp32 (highest) on the photos, on the accelerator.
            batch = np.stack([preprocess_eval(p, spec.eval_transform) for p in pics])
            batch = jax.device_put(batch, accel)
            with jax.default_matmul_precision("float32"):
                fp32 = np.asarray(jax.jit(model.apply)(on_accel, batch), np.float64)
            bf16_model = vitjax.create_model(name, dtype=jnp.bfloat16)
            bf16 = np.asarray(jax.jit(bf16_model.apply)(on_accel, batch).astype(jnp.float32), np.float64)
            top_fp32, top_bf16 = fp32.argmax(-1), bf16.argmax(-1)
            ordered = np.sort(fp32, axis=-1)
            margin = ordered[:, -1] - ordered[:, -2]
            diff = np.abs(bf16 - fp32).max(-1)
            decisive = margin > 2 * diff
            agree = top_fp32 == top_bf16
            rec.write(
                {
                    "item": "model",
                    "model": name,
                    "rel_error": errors,
                    "passed": {p: errors[p] <= TOLERANCES[p] for p in errors},
                    "logit_scale": float(np.abs(ref).max()),
                    "photos": len(pics),
                    "bf16_top1_agree": int(agree.sum()),
                    "bf16_decisive": int(decisive.sum()),
                    "bf16_decisive_agree": int((agree & decisive).sum()),
                    "bf16_passed": bool(agree[decisive].all()),
                    "bf16_max_logit_diff": float(diff.max()),
                    "fp32_median_margin": float(np.median(margin)),
                    "disagreeing_photos": [pic_names[i] for i in np.flatnonzero(~agree)],
                    "seconds": time.perf_counter() - start,
                }
            )
        except Exception as e:  # one model's failure is recorded; the sweep goes on
            rec.write({"item": "model", "model": name, "error": error_text(e)})
