"""Static int8 quantization of an ONNX model (``interop quantize``, :mod:`interop.quantize`).

The model under test is a test-size DeiT (32 pixels) trained for a few seconds on scikit-learn's
digits: a classifier whose top-1 varies across inputs (a random network gives one or two classes
for every input, which would make agreement trivial). It is calibrated on digits from the train
split and checked on held-out ones.
"""

import json

import jax
import numpy as np
import pytest
from PIL import Image

import vitjax
from interop.__main__ import main as interop_main
from interop.deploy import OnnxRuntimePredictor, create_predictor
from interop.parity import render_markdown, run_parity

pytest.importorskip("jax2onnx")
onnx = pytest.importorskip("onnx")
pytest.importorskip("sklearn")

from interop.onnx_from_jax import export_onnx_from_jax  # noqa: E402  (after the skips: the onnx extra)
from interop.quantize import QuantizationError, quantization_record, quantize_onnx  # noqa: E402
from vitjax.data.sources import DigitsSource  # noqa: E402
from vitjax.data.transforms import preprocess_eval  # noqa: E402

NAME = "DeiT_test_patch8_32"
# Top-1 agreement with the float model on 120 held-out digits. A flip needs a near-tie: the int8
# file's logits move by ~1e-2 (measured on the trained digits model: mean 0.009, top-1 agreement
# 100% on 360 held-out digits). 95% allows six near-ties and still fails a broken quantization
# (quantizing the residual Adds measures 77% agreement on the digits model).
MIN_AGREEMENT = 0.95
# What int8 may never touch: the ops of LayerNorm (ReduceSum, Sub, Div, Sqrt) and of softmax
# (ReduceMax, Exp) in jax2onnx's graph, and their fused forms.
FLOAT_ONLY = {"ReduceSum", "ReduceMean", "ReduceMax", "Sub", "Div", "Sqrt", "Exp", "Softmax", "LayerNormalization"}


def _digits_inputs(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    source = DigitsSource(split)
    t = vitjax.get_spec(NAME).eval_transform
    images = np.stack([preprocess_eval(im, t).transpose(2, 0, 1) for im in source.images[:count]])
    return images.astype(np.float32), source.labels[:count]


@pytest.fixture(scope="module")
def probe_variables():
    """The test-size DeiT trained for 150 Adam steps on 600 train digits (a few seconds): a classifier.
    (A random network, or a least-squares head on its features, is not one: its top-1 hangs on
    feature differences smaller than int8's rounding.)"""
    import optax

    size = vitjax.get_spec(NAME).img_size
    model = vitjax.create_model(NAME, num_classes=10)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
    x, y = _digits_inputs("train", 600)
    x = x.transpose(0, 2, 3, 1)
    optimizer = optax.adam(2e-3)

    @jax.jit
    def step(params, state, images, labels):
        def loss(p):
            logits = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = variables["params"]
    state = optimizer.init(params)
    order = np.random.RandomState(0).permutation(np.tile(np.arange(600), 32))
    for i in range(150):
        batch = order[i * 100 : (i + 1) * 100]
        params, state = step(params, state, x[batch], y[batch])
    return {"params": params}


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    source = DigitsSource("train")
    for i in range(600, 664):  # not the probe's fitting images
        Image.fromarray(source.images[i]).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def float_file(probe_variables, tmp_path_factory):
    out = tmp_path_factory.mktemp("float") / "probe.onnx"
    return export_onnx_from_jax(probe_variables, out, NAME, softmax=False)


@pytest.fixture(scope="module")
def int8_file(float_file, calibration_dir):
    return quantize_onnx(float_file, calibration_dir, float_file.with_suffix(".int8.onnx"))


def test_int8_file_loads_has_int8_matmuls_keeps_layernorm_and_softmax_float_and_agrees(float_file, int8_file):
    model = onnx.load(str(int8_file))
    nodes = model.graph.node
    produced_by = {out: n for n in nodes for out in n.output}
    ops = {n.op_type for n in nodes}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) >= 9  # qkv, proj, fc1, fc2 in 2 blocks + the head: all Gemm weights are int8
    # every dequantized value feeds a matrix product only; LayerNorm's and softmax's ops see float
    for node in nodes:
        sources = [produced_by.get(i) for i in node.input]
        if any(s is not None and s.op_type == "DequantizeLinear" for s in sources):
            assert node.op_type in ("MatMul", "Gemm", "Conv"), node.op_type
        if node.op_type in FLOAT_ONLY:
            assert all(s is None or s.op_type != "DequantizeLinear" for s in sources), node.name
    assert FLOAT_ONLY & ops  # the graph does have them (jax2onnx's LayerNorm and softmax primitives)

    x, labels = _digits_inputs("validation", 120)
    fp32 = OnnxRuntimePredictor(float_file).predict(x)
    int8 = create_predictor("onnxruntime-jax", onnx_path=int8_file).predict(x)  # like any ONNX file
    assert int8.shape == fp32.shape == (120, 10)
    assert len(set(fp32.argmax(-1))) >= 8  # a classifier, not a constant: agreement means something
    assert np.mean(fp32.argmax(-1) == labels) >= 0.6, np.mean(fp32.argmax(-1) == labels)
    assert np.mean(int8.argmax(-1) == fp32.argmax(-1)) >= MIN_AGREEMENT
    assert 0 < float(np.abs(int8 - fp32).max()) < 1.0  # quantized (not bit-equal), yet close


def test_int8_file_says_what_it_is_and_serves(int8_file, calibration_dir):
    model = onnx.load(str(int8_file), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vitjax.model"] == NAME and meta["vitjax.output"] == "logits"
    assert json.loads(meta["vitjax.eval_transform"])["crop_size"] == 32
    record = quantization_record(int8_file)
    assert record["format"] == "QDQ" and record["activations"] == "uint8" and "per output channel" in record["weights"]
    assert record["calibration"] == f"MinMax on 64 images from {calibration_dir.name}"
    pytest.importorskip("uvicorn")
    from interop.serving import load_served_model

    served = load_served_model(int8_file, "onnxruntime-jax", threads=1, max_batch_size=2)
    assert served.name == NAME and served.labels[:2] == ["class 0", "class 1"]


def test_a_paddle2onnx_file_needs_the_model_name_then_carries_it(probe_variables, calibration_dir, tmp_path):
    from interop.inference import export_inference_model, export_onnx

    model_dir = export_inference_model(probe_variables, NAME, tmp_path / "paddle", softmax=True)
    float_file = export_onnx(model_dir, tmp_path / "p2o.onnx")
    out = tmp_path / "p2o.int8.onnx"
    with pytest.raises(QuantizationError, match=rf"^{float_file}: no vitjax metadata .* --model$"):
        quantize_onnx(float_file, calibration_dir, out)
    assert not out.exists()
    quantize_onnx(float_file, calibration_dir, out, model_name=NAME)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["vitjax.model"] == NAME and meta["vitjax.output"] == "probabilities"
    assert meta["vitjax.num_classes"] == "10"
    x, _ = _digits_inputs("validation", 60)
    fp32, int8 = OnnxRuntimePredictor(float_file).predict(x), OnnxRuntimePredictor(out).predict(x)
    assert np.mean(int8.argmax(-1) == fp32.argmax(-1)) >= MIN_AGREEMENT


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = interop_main(["quantize", *args])
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_naming_the_file_and_leaves_no_file(float_file, calibration_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "out" / "m.int8.onnx"
    out.parent.mkdir()
    code, err = _cli(capsys, str(float_file), "--calibration", str(empty), "--out", str(out))
    assert code != 0 and err.startswith(f"error: {empty}: calibration folder has no images") and "\n" not in err

    not_onnx = tmp_path / "weights.onnx"
    not_onnx.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    code, err = _cli(capsys, str(not_onnx), "--calibration", str(calibration_dir), "--out", str(out))
    assert code != 0 and err.startswith(f"error: {not_onnx}: not an ONNX model") and "\n" not in err

    missing = tmp_path / "missing" / "m.int8.onnx"
    code, err = _cli(capsys, str(float_file), "--calibration", str(calibration_dir), "--out", str(missing))
    assert code != 0 and err.startswith(f"error: {missing}: output directory") and "does not exist" in err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    code, err = _cli(capsys, str(float_file), "--calibration", str(broken), "--out", str(out))
    assert code != 0 and err.startswith(f"error: {broken / 'a.png'}: cannot decode image") and "\n" not in err

    assert list(out.parent.iterdir()) == [] and not missing.parent.exists()  # no output, no partial file


def test_cli_writes_the_file_and_refuses_to_overwrite(float_file, calibration_dir, tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    args = (str(float_file), "--calibration", str(calibration_dir), "--out", str(out), "--max-images", "8")
    assert interop_main(["quantize", *args]) == 0
    assert f"-> {out} (int8 QDQ" in capsys.readouterr().out
    assert quantization_record(out)["calibration"].startswith("MinMax on 8 images")
    code, err = _cli(capsys, *args)
    assert code != 0 and "already exists" in err
    code, err = _cli(capsys, str(out), "--calibration", str(calibration_dir), "--out", str(tmp_path / "again.onnx"))
    assert code != 0 and err == f"error: {out}: already quantized; quantize the float model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]


def test_parity_report_judges_int8_by_agreement_not_logits(probe_variables, calibration_dir, tmp_path):
    photos = [(f"digit {i}", image) for i, image in enumerate(DigitsSource("validation").images[:24])]
    report = run_parity(
        probe_variables,
        tmp_path,
        NAME,
        backends=["jax", "onnxruntime-int8"],
        photos=photos,
        calibration=calibration_dir,
        latency_batches=(1,),
        latency_runs=1,
    )
    entry = report["backends"]["onnxruntime-int8"]
    assert entry["precision"] == "int8" and entry["calibration"] == str(calibration_dir)
    assert entry["tolerance"]["top1_agreement"] == report["tolerances"]["int8"]["top1_agreement"]
    photos_metrics = entry["inputs"]["photos"]
    assert photos_metrics["max_abs_logits"] > 1e-4  # outside any fp32 tolerance, and still judged a pass:
    assert photos_metrics["passed"] is True and entry["passed"] and report["passed"]
    assert entry["inputs"]["random"]["passed"] is None  # noise is outside the calibration set: not judged
    markdown = render_markdown(report)
    assert "int8: top-1 agreement >= " in markdown and "| onnxruntime-int8 | random |" in markdown
    assert "not judged" in markdown
