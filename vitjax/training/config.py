"""The configuration schema shared by every file in ``configs/``.

:func:`base_config` declares every field with its default, so that
``--config.some.field=value`` overrides work and a misspelt field is an error (the
config is locked). The recipe helpers set PaddleClas's training recipe per family.
"""

from __future__ import annotations

import ml_collections

# Parameters never decayed in the DeiT recipe (PaddleClas: no_weight_decay_name
# "norm cls_token pos_embed dist_token" + one_dim_param_no_weight_decay).
DEIT_NO_DECAY = ("norm", "cls_token", "pos_embed", "dist_token")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "train"  # train | eval | predict
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "DeiT_tiny_patch16_224"
    c.model.num_classes = 1000
    c.model.img_size = 0  # 0: the model's default
    c.model.drop_rate = 0.0
    c.model.attn_drop_rate = 0.0
    c.model.drop_path_rate = 0.1
    # Computation dtype: float32 | bfloat16. bfloat16 runs matmuls and activations in bf16 on any
    # backend; parameters, gradients, optimizer state, EMA, LayerNorm statistics and the loss stay float32.
    c.model.dtype = "float32"
    # The dense layers' matmul kernel: xla | onednn (vitjax.kernels.onednn: oneDNN on the CPU, faster
    # training there; needs the cpu-kernels extra and a C++ compiler) | auto (onednn when this run is
    # on one CPU device and the kernel builds, else xla). Same parameters and checkpoints either way.
    c.model.matmul = "auto"

    # Initial weights (fine-tuning, eval, predict): a .pdparams file or an orbax
    # checkpoint / workdir. A workdir that already has checkpoints resumes instead.
    c.init = ml_collections.ConfigDict()
    c.init.pdparams = ""
    # True: PaddleClas's published weights for model.name, downloaded once into the cache
    # ($VITJAX_CACHE; see vitjax.load_pretrained), then loaded like init.pdparams.
    c.init.pretrained = False
    c.init.checkpoint = ""
    c.init.head = "strict"  # strict | reinit | skip (skip: keep the fresh head)
    # eval/predict (and init.checkpoint): take the checkpoint's EMA weights instead of its raw ones;
    # an error when the checkpoint has none.
    c.init.use_ema = False

    c.data = ml_collections.ConfigDict()
    c.data.source = "digits"  # digits | tfds:<name> | filelist | folder
    c.data.data_dir = ""  # tfds data_dir
    c.data.manual_dir = ""  # tfds manual_dir (imagenet2012's tars)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.root = ""  # filelist: image root; folder: the folder holding train_folder and val_folder
    c.data.train_list = "train_list.txt"  # filelist: "path label" lines, relative to root
    c.data.val_list = "val_list.txt"
    c.data.train_folder = "train"  # folder: <root>/<train_folder>/<class>/<image>; class names = sorted subfolders
    c.data.val_folder = "val"  # folder: <root>/<val_folder>/<class>/<image>, classes a subset of train's
    c.data.class_names = ""  # a file with one class name per line (predict)
    c.data.on_bad_image = "skip"  # skip (count and log the path) | fail
    # Decoding/augmenting workers per host (0: read in the training thread, no read-ahead).
    c.data.num_workers = 2
    # threads: one pool, examples read ~one batch ahead; enough for a few cores (PIL releases
    # the GIL while decoding and resizing). processes: grain mp_prefetch, each worker builds
    # whole batches; for many-core hosts, where threads stop scaling against the GIL.
    # Both give the same batches. benchmarks/loader.py measures them.
    c.data.worker_kind = "threads"
    c.data.reduced_decode = True  # training JPEGs decoded at 1/2-1/8 scale where the random crop allows it
    c.data.eval_resize_short = 0  # 0: the model's PaddleClas eval transform
    c.data.eval_crop_size = 0

    c.augment = ml_collections.ConfigDict()
    c.augment.random_resized_crop = True
    c.augment.crop_scale = (0.08, 1.0)
    c.augment.interpolation = "bicubic"
    c.augment.hflip = True
    c.augment.randaugment = ""  # e.g. rand-m9-mstd0.5-inc1
    c.augment.random_erasing = 0.0
    c.augment.mixup_alpha = 0.0
    c.augment.cutmix_alpha = 0.0
    c.augment.mix_prob = 1.0  # probability that a batch is mixed at all
    c.augment.switch_prob = 0.5  # mixup vs cutmix when both are on
    c.augment.label_smoothing = 0.0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adamw | momentum
    c.optimizer.base_lr = 5e-4  # at a global batch of lr_batch_base; scaled linearly
    c.optimizer.lr_batch_base = 512
    c.optimizer.weight_decay = 0.05
    c.optimizer.no_decay = DEIT_NO_DECAY  # name parts never decayed
    c.optimizer.decay_one_dim = False  # decay 1-D parameters (biases, norms) too
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.momentum = 0.9
    c.optimizer.grad_clip = 0.0  # global norm; 0 disables
    c.optimizer.schedule = "cosine"  # cosine | piecewise | constant
    c.optimizer.warmup_epochs = 5.0
    c.optimizer.warmup_start_lr = 2e-6
    c.optimizer.min_lr = 2e-5
    c.optimizer.piecewise_epochs = (30, 60, 90)
    c.optimizer.piecewise_scales = (0.1, 0.01, 0.001)
    # Layer-wise learning-rate decay (fine-tuning; docs/finetuning.md): 0 is off; d in (0, 1] scales
    # each parameter's rate by d ** (depth + 1 - layer): the head 1, block i d ** (depth - i), the
    # stem d ** (depth + 1), as timm's param_groups_layer_decay. Scales below the minimum are raised to it.
    c.optimizer.layer_decay = 0.0
    c.optimizer.layer_decay_min_scale = 0.0
    # Extra learning-rate multipliers: ((regex, multiplier), ...) searched in the "/"-joined parameter
    # path (e.g. ("^head", 10.0)); each matching pair multiplies. A pattern that matches nothing is an error.
    c.optimizer.lr_mults = ()

    c.batch_size = 256  # global, over all devices and hosts
    # Gradient accumulation: each step runs accum_steps micro-batches of batch_size / accum_steps
    # (a scan inside the jitted step) and makes one update from their mean gradient: the update of
    # one batch_size batch, with the activation memory of one micro-batch. 1: off.
    c.accum_steps = 1
    c.eval_batch_size = 256
    c.num_epochs = 300.0
    c.num_steps = 0  # >0 overrides num_epochs
    c.log_every = 50
    c.eval_every = 0  # steps; 0: at the end only
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by the model axis
    c.mesh.model = 1
    c.sharding = ml_collections.ConfigDict()
    c.sharding.strategy = "dp"  # dp | fsdp | tp | fsdp_tp
    c.sharding.rules = ()  # extra (regex, spec) pairs, tried first; spec like ("data", None)

    # An exponential moving average of the parameters, kept in the checkpoint and evaluated beside
    # them (ema_top1 in metrics.jsonl). decay 0: off. With warmup, update t (1-based) uses
    # min(decay, 1 - (1 + (t - 1) / warmup_gamma) ** -warmup_power), as timm's ModelEmaV3; the
    # first update copies the parameters either way.
    c.ema = ml_collections.ConfigDict()
    c.ema.decay = 0.0
    c.ema.warmup = False
    c.ema.warmup_gamma = 1.0
    c.ema.warmup_power = 2 / 3

    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""  # a registered model name; empty: no teacher
    c.distill.teacher_pdparams = ""
    c.distill.teacher_checkpoint = ""
    c.distill.teacher_img_size = 0

    c.predict = ml_collections.ConfigDict()
    c.predict.images = ""  # comma-separated image paths
    c.predict.topk = 5

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # host:port; empty: single process (or env)
    c.distributed.num_processes = 1
    c.distributed.process_id = 0

    c.nan_check = True
    c.plot = True
    return c


def deit_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """PaddleClas's DeiT recipe (ppcls/configs/ImageNet/DeiT): 300 epochs, AdamW."""
    c.model.drop_path_rate = 0.1
    c.optimizer.update(
        name="adamw",
        base_lr=5e-4,
        lr_batch_base=512,
        weight_decay=0.05,
        no_decay=DEIT_NO_DECAY,
        decay_one_dim=False,
        schedule="cosine",
        warmup_epochs=5.0,
        warmup_start_lr=2e-6,
        min_lr=2e-5,
    )
    c.augment.update(
        random_resized_crop=True,
        interpolation="bicubic",
        hflip=True,
        randaugment="rand-m9-mstd0.5-inc1",
        random_erasing=0.25,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        mix_prob=1.0,
        switch_prob=0.5,
        label_smoothing=0.1,
    )
    c.batch_size = 1024
    c.num_epochs = 300.0
    return c


def tnt_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """PaddleClas's TNT recipe (ppcls/configs/ImageNet/TNT): 120 epochs, momentum SGD,
    L2 1e-4, piecewise decay at epochs 30/60/90, lr 0.1 at a global batch of 512."""
    c.model.drop_path_rate = 0.0
    c.optimizer.update(
        name="momentum",
        base_lr=0.1,
        lr_batch_base=512,
        weight_decay=1e-4,
        no_decay=(),
        decay_one_dim=True,
        momentum=0.9,
        schedule="piecewise",
        warmup_epochs=0.0,
        piecewise_epochs=(30, 60, 90),
        piecewise_scales=(0.1, 0.01, 0.001),
    )
    c.augment.update(
        random_resized_crop=True,
        interpolation="bicubic",
        hflip=True,
        randaugment="",
        random_erasing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        label_smoothing=0.0,
    )
    c.batch_size = 512
    c.num_epochs = 120.0
    return c


def imagenet(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.data.source = "tfds:imagenet2012"
    c.model.num_classes = 1000
    return c


def imagenet_config(model_name: str) -> ml_collections.ConfigDict:
    """ImageNet training of ``model_name`` with its family's PaddleClas recipe."""
    c = base_config()
    recipe = tnt_recipe if model_name.startswith("TNT") else deit_recipe
    c = imagenet(recipe(c))
    c.model.name = model_name
    return c


def finetune_config(model_name: str, accum_steps: int, num_classes: int | None = None) -> ml_collections.ConfigDict:
    """Fine-tuning ``model_name`` from PaddleClas's ImageNet weights (downloaded by name) on an
    image folder (``data.root``/train/<class>/*.jpg, ``data.root``/val/<class>/*.jpg), new head.

    The recipe people start from with timm or BEiT: AdamW at 5e-4 per 512 images, weight decay
    0.05, layer-wise learning-rate decay 0.75, 3 warm-up epochs then cosine to 1e-6 over 30 epochs,
    an EMA of the weights (0.999, warmed up as timm's ModelEmaV3), the DeiT augmentations (RandAugment,
    Mixup/CutMix, random erasing, label smoothing) and a batch of 512 reached by ``accum_steps``
    micro-batches. docs/finetuning.md explains each part.
    """
    c = deit_recipe(base_config())
    c.model.name = model_name
    c.model.num_classes = num_classes or 1000  # set to the folder's number of classes
    c.model.drop_path_rate = 0.1
    c.init.pretrained = True
    c.init.head = "reinit"
    c.data.source = "folder"
    c.optimizer.update(
        base_lr=5e-4,
        lr_batch_base=512,
        weight_decay=0.05,
        layer_decay=0.75,
        warmup_epochs=3.0,
        warmup_start_lr=1e-6,
        min_lr=1e-6,
        schedule="cosine",
    )
    c.ema.update(decay=0.999, warmup=True)
    c.batch_size = 512
    c.accum_steps = accum_steps
    c.num_epochs = 30.0
    c.eval_batch_size = 128
    c.checkpoint_every = 200
    return c
