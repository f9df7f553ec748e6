"""The Colab notebook runs top to bottom here (CPU backend, 8 host devices), cell by cell as a
Jupyter kernel runs it: one namespace, and a cell whose last line is an expression shows its
value. ``IPython.display.Image`` is stood in for (no Jupyter here): showing one decodes the PNG
and prints what a notebook would display."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "vitjax_colab.ipynb"

# Runs the cells of a JSON list [[id, source], ...] (argv[1]) in order, as IPython would.
RUNNER = r'''
import ast, io, json, sys

from PIL import Image as PILImage


class Image:
    """IPython.display.Image: a PNG file (or its bytes) to show."""

    def __init__(self, filename=None, data=None):
        self.data = data if data is not None else open(filename, "rb").read()


def show(cell, value):
    if isinstance(value, Image):
        picture = PILImage.open(io.BytesIO(value.data))
        picture.load()  # a truncated or corrupt file fails here
        print(f"[cell {cell}] shows image/{picture.format.lower()} {picture.size[0]}x{picture.size[1]}", flush=True)
    else:
        print(f"[cell {cell}] shows {value!r}", flush=True)


namespace = {"__name__": "__main__", "Image": Image}
for cell, source in json.load(open(sys.argv[1])):
    print(f"[cell {cell}] runs", flush=True)
    tree = ast.parse(source, f"<cell {cell}>")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, f"<cell {cell}>", "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), f"<cell {cell}>", "eval"), namespace)
        if value is not None:
            show(cell, value)
print("NOTEBOOK OK")
'''


IPYTHON_IMPORT = "from IPython.display import Image"  # the runner's Image stands in


def code_cells() -> list[tuple[str, str]]:
    """(id, source) of the notebook's code cells. IPython shell escapes (``!pip ...``) only run
    on Colab and are dropped, and so is the import of IPython's ``Image``."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return [
        (
            cell["id"],
            "".join(
                line for line in cell["source"] if not line.lstrip().startswith("!") and line.strip() != IPYTHON_IMPORT
            ),
        )
        for cell in cells
        if cell["cell_type"] == "code"
    ]


def test_notebook_is_valid_and_saved_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    assert (notebook["nbformat"], notebook["nbformat_minor"]) == (4, 5)
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids)  # nbformat 4.5: unique cell ids
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["id"]
    for cell_id, source in code_cells():
        compile(source, cell_id, "exec")
    setup = next(cell for cell in notebook["cells"] if cell["id"] == "setup")
    assert IPYTHON_IMPORT + "\n" in setup["source"]  # what the runner's stand-in replaces


def run_cells(tmp_path, cells, **env) -> subprocess.CompletedProcess:
    """Runs ``cells`` in a fresh Python as a notebook kernel would, on 8 CPU devices, writing under
    ``tmp_path`` (the notebook writes below ``tempfile.gettempdir()``)."""
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **env,
    }
    return subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "cells.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.notebook
def test_weights_by_name_when_download_is_switched_on(tmp_path):
    """``DOWNLOAD = True``: the weights cell takes the model's weights by name. Served here from
    127.0.0.1, registered under the test model's name (PaddleClas publishes none for it)."""
    import jax
    import jax.numpy as jnp
    from weight_server import serving

    import vitjax

    variables = vitjax.create_model("DeiT_test_patch8_32").init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
    vitjax.save_pdparams(variables, "DeiT_test_patch8_32", tmp_path / "w.pdparams")
    body = (tmp_path / "w.pdparams").read_bytes()
    path = "/weights/DeiT_test_patch8_32_pretrained.pdparams"
    cells = dict(code_cells())
    assert "\nDOWNLOAD = False" in cells["weights"]
    with serving({path: body}) as server:
        register = f"vitjax.register_pretrained('DeiT_test_patch8_32', '{server.base}{path}')"
        run = [(i, cells[i]) for i in ("install", "setup")] + [("register", register)]
        run.append(("weights", cells["weights"].replace("\nDOWNLOAD = False", "\nDOWNLOAD = True")))
        result = run_cells(tmp_path, run, VITJAX_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "DeiT_test_patch8_32_pretrained.pdparams same logits: True" in result.stdout
    assert server.gets(path) == [(None, 200)]  # downloaded once; the second call hit the cache
    assert (tmp_path / "cache" / "paddleclas" / "DeiT_test_patch8_32_pretrained.pdparams").read_bytes() == body
    assert not (tmp_path / "vitjax_colab" / "DeiT_test_patch8_32.pdparams").exists()


@pytest.mark.slow
@pytest.mark.notebook
def test_colab_notebook_runs_on_cpu(tmp_path):
    # VITJAX_OFFLINE: as it stands the notebook downloads nothing; a download would fail here.
    result = run_cells(tmp_path, code_cells(), VITJAX_OFFLINE="1")
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "NOTEBOOK OK" in out and "devices: 8" in out
    work = tmp_path / "vitjax_colab"

    # 1. weights: a .pdparams in PaddleClas's format, read back to the same logits
    assert "DeiT_test_patch8_32.pdparams same logits: True" in out
    assert (work / "DeiT_test_patch8_32.pdparams").stat().st_size > 0

    # 2. the image folder: six classes of real photos, disjoint train and val crops
    classes = ["astronaut", "chelsea", "china", "coffee", "flower", "rocket"]
    assert f"image folder: 6 classes {classes}, 144 train and 36 val images" in out
    for split, count in (("train", 24), ("val", 6)):
        assert sorted(p.name for p in (work / "photos" / split).iterdir()) == classes
        for name in classes:
            assert len(list((work / "photos" / split / name).glob("*.jpg"))) == count, (split, name)
    assert "[cell folder] shows image/png 384x576" in out  # the crops, 4 per class

    # 3. fine-tuning with the recipe: new head, EMA kept in the checkpoint and evaluated beside the raw weights
    from vitjax.training import checkpoints

    workdir = work / "finetune_DeiT_test_patch8_32"
    assert "DeiT_test_patch8_32: head -> 6 classes, layer decay 0.75, EMA 0.999, accum_steps 2, dtype float32" in out
    assert checkpoints.latest_step(workdir) == 300
    raw, ema = (checkpoints.load_variables(workdir, ema=e)["params"] for e in (False, True))
    assert raw["head"]["kernel"].shape == ema["head"]["kernel"].shape == (64, 6)
    assert not (raw["head"]["kernel"] == ema["head"]["kernel"]).all()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row["kind"] == "eval"]
    assert {row["step"] for row in evals} == {50, 100, 150, 200, 250, 300} and all("ema_top1" in row for row in evals)
    final = evals[-1]
    assert final["step"] == 300 and final["count"] == 36
    shown = f"step 300: top-1 {final['top1']:.3f} (raw weights), {final['ema_top1']:.3f} (EMA), on 36 held-out crops"
    assert shown in out
    assert final["top1"] > 0.4 and final["ema_top1"] > 0.4, final  # chance is 1/6
    assert "[cell finetune-results] shows image/png" in out  # the training curves

    # 4. features and the attention picture, from the fine-tuned (EMA) weights, on the held-out photos
    assert "block 1: tokens (6, 17, 64), grid (6, 4, 4, 64), class token (6, 1, 64), attention (6, 4, 17, 17)" in out
    assert "stopped after block 0, no head run: True" in out and "class-token rollout: (6, 4, 4)" in out
    assert "explain: 7 pictures" in out
    assert sorted(p.name for p in (workdir / "explain").iterdir()) == sorted(
        [f"{name}_00.png" for name in classes] + ["chelsea.png"]
    )
    assert "[cell picture] shows image/png 1200x400" in out  # photo, rollout, top-5
