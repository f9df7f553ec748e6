"""The KServe v2 protocol over gRPC, driven by Triton's own client (``tritonclient.grpc``), unchanged.

The gRPC service shares the HTTP routes' protocol object (`KServeModel`): the answers must be
the predictor's probabilities, the same refusals must come back as gRPC status codes, and the
statistics must count gRPC requests beside HTTP ones.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
from test_serving import ATOL, LIMITS, NAME, exported, photos, png, serving  # noqa: F401  (fixtures)

from interop.deploy import create_predictor
from interop.parity import photo_batch
from interop.serving import load_served_model
from interop.serving.grpc_service import MESSAGES

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

# our message -> tritonclient's (same fields on the wire; our names are our own)
TRITON_NAMES = {
    "ServerLiveResponse": "inference.ServerLiveResponse",
    "ServerReadyResponse": "inference.ServerReadyResponse",
    "ModelRequest": "inference.ModelMetadataRequest",
    "ModelReadyResponse": "inference.ModelReadyResponse",
    "ServerMetadataResponse": "inference.ServerMetadataResponse",
    "TensorMetadata": "inference.ModelMetadataResponse.TensorMetadata",
    "ModelMetadataResponse": "inference.ModelMetadataResponse",
    "InferParameter": "inference.InferParameter",
    "ParameterEntry": "inference.ModelInferRequest.ParametersEntry",
    "InferTensorContents": "inference.InferTensorContents",
    "InferInputTensor": "inference.ModelInferRequest.InferInputTensor",
    "InferRequestedOutputTensor": "inference.ModelInferRequest.InferRequestedOutputTensor",
    "ModelInferRequest": "inference.ModelInferRequest",
    "InferOutputTensor": "inference.ModelInferResponse.InferOutputTensor",
    "ModelInferResponse": "inference.ModelInferResponse",
    "ModelInput": "inference.ModelInput",
    "ModelOutput": "inference.ModelOutput",
    "ModelDynamicBatching": "inference.ModelDynamicBatching",
    "ModelInstanceGroup": "inference.ModelInstanceGroup",
    "ModelConfig": "inference.ModelConfig",
    "ModelConfigResponse": "inference.ModelConfigResponse",
    "StatisticDuration": "inference.StatisticDuration",
    "InferStatistics": "inference.InferStatistics",
    "ModelStatistics": "inference.ModelStatistics",
    "ModelStatisticsResponse": "inference.ModelStatisticsResponse",
    "RepositoryIndexRequest": "inference.RepositoryIndexRequest",
    "ModelIndex": "inference.RepositoryIndexResponse.ModelIndex",
    "RepositoryIndexResponse": "inference.RepositoryIndexResponse",
}


def test_every_message_table_agrees_with_tritons_descriptors_field_by_field():
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    pool = service_pb2.DESCRIPTOR.pool
    enum_as_varint = {descriptor_pb2.FieldDescriptorProto.TYPE_ENUM: descriptor_pb2.FieldDescriptorProto.TYPE_INT32}
    for ours, theirs in TRITON_NAMES.items():
        fields = {f.number: f for f in pool.FindMessageTypeByName(theirs).fields}
        for name, number, kind, *rest in MESSAGES[ours]:
            repeated = (rest + [None, ""])[1] == "repeated"
            assert number in fields, f"{ours}.{name}: no field {number} in {theirs}"
            field = fields[number]
            assert (field.name, enum_as_varint.get(field.type, field.type), field.is_repeated) == (
                name,
                kind,
                repeated,
            ), f"{ours}.{name} differs from {theirs}.{field.name}"
    assert set(TRITON_NAMES) == set(MESSAGES) - {"Empty"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def grpc_server(exported):
    """The onnxruntime server of the HTTP tests, with the gRPC service on as well: (http url, grpc address)."""
    import dataclasses

    _, model_dir = exported
    address = f"127.0.0.1:{_free_port()}"
    config = dataclasses.replace(LIMITS, grpc_address=address)
    with serving(load_served_model(model_dir, "onnxruntime", threads=1), config) as url:
        yield url, address


def test_tritonclient_grpc_infers_the_predictors_probabilities(grpc_server, exported, photos):
    _, address = grpc_server
    variables, _ = exported
    images = photo_batch(photos[:2], NAME)
    expected = create_predictor("jax", variables=variables, model_name=NAME).predict(images)
    client = grpcclient.InferenceServerClient(address)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME, "1")
        assert "classification" in client.get_server_metadata(as_json=True)["extensions"]
        meta = client.get_model_metadata(NAME, as_json=True)
        assert meta["inputs"][0]["name"] == "x" and meta["inputs"][0]["shape"] == ["-1", "3", "32", "32"]
        config = client.get_model_config(NAME, as_json=True)["config"]
        assert config["input"][0]["data_type"] == "TYPE_FP32" and config["input"][0]["format"] == "FORMAT_NCHW"
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == int(LIMITS.max_wait_ms * 1000)

        x = grpcclient.InferInput("x", list(images.shape), "FP32")
        x.set_data_from_numpy(images)
        result = client.infer(NAME, [x], request_id="r1")
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=0, atol=ATOL)
        assert result.get_response().id == "r1"

        blobs = grpcclient.InferInput("images", [2], "BYTES")
        blobs.set_data_from_numpy(np.array([png(image) for _, image in photos[:2]], dtype=np.object_))
        result = client.infer(NAME, [blobs], model_version="1")
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=0, atol=ATOL)

        top = grpcclient.InferRequestedOutput("probabilities", class_count=3)
        entries = client.infer(NAME, [x], outputs=[top]).as_numpy("probabilities")
        assert entries.shape == (2, 3)
        for row, row_entries in zip(expected, entries):
            indices = [int(e.decode().split(":")[1]) for e in row_entries]
            assert indices == list(np.argsort(-row, kind="stable")[:3])
    finally:
        client.close()


def test_refusals_are_grpc_status_codes_and_statistics_count_both_protocols(grpc_server, photos):
    url, address = grpc_server
    client = grpcclient.InferenceServerClient(address)
    try:
        before = client.get_inference_statistics(NAME, as_json=True)["model_stats"][0]
        bad = grpcclient.InferInput("x", [1, 3, 2, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 2, 2), np.float32))
        with pytest.raises(InferenceServerException, match="does not fit the model input") as info:
            client.infer(NAME, [bad])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        nan = grpcclient.InferInput("x", [1, 3, 32, 32], "FP32")
        nan.set_data_from_numpy(np.full((1, 3, 32, 32), np.nan, np.float32))
        with pytest.raises(InferenceServerException, match="NaN or infinite"):
            client.infer(NAME, [nan])
        with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
            client.get_model_metadata("nope")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException, match="unknown input 'y'"):
            other = grpcclient.InferInput("y", [1, 3, 32, 32], "FP32")
            other.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
            client.infer(NAME, [other])
        good = photo_batch(photos[:1], NAME)
        x = grpcclient.InferInput("x", list(good.shape), "FP32")
        x.set_data_from_numpy(good)
        client.infer(NAME, [x])
        after = client.get_inference_statistics(NAME, as_json=True)["model_stats"][0]
        fails = int(after["inference_stats"]["fail"].get("count", 0)) - int(
            before["inference_stats"]["fail"].get("count", 0)
        )
        assert fails == 3  # the bad shape, the NaN and the unknown input (an unknown model never reaches the model)
        assert int(after["execution_count"]) - int(before.get("execution_count", 0)) == 1
        index = client.get_model_repository_index(as_json=True)["models"]
        assert index == [{"name": NAME, "version": "1", "state": "READY"}]
        # The HTTP side reads the same statistics object.
        import json
        import urllib.request

        http_stats = json.loads(urllib.request.urlopen(f"{url}/v2/models/{NAME}/stats", timeout=30).read())
        assert http_stats["model_stats"][0]["execution_count"] == int(after["execution_count"])
    finally:
        client.close()


# --- connection limits: a gRPC client that goes silent must not keep its connection or its call slot


@contextlib.contextmanager
def tiny_grpc_server(**limits):
    """The tiny numpy model with the gRPC service on, its connection limits at a second or two; yields the address."""
    import dataclasses

    from test_serving_connections import QUICK
    from testutil import serving_in_thread, tiny_model

    from interop.serving import create_app

    address = f"127.0.0.1:{_free_port()}"
    config = dataclasses.replace(QUICK, body_timeout_s=1.0, request_timeout_s=1.0, grpc_address=address, **limits)
    with serving_in_thread(create_app(tiny_model(), config), ready_within_s=60):
        yield config.grpc_address


def test_a_silent_grpc_connection_is_closed_after_the_header_timeout():
    from test_serving_connections import read_until_closed

    with tiny_grpc_server() as address:
        host, _, port = address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.settimeout(1)
            read_until_closed(sock, limit_s=15)  # fails unless the server closes it (grpcio's default: 120 s)


def test_calls_whose_request_never_arrives_give_their_slots_back():
    """Two calls that send their headers and never their message hold both slots of ``max_connections=2``;
    the connection age limit closes them, and a third client is then served."""
    import grpc

    method = "/inference.GRPCInferenceService/"
    stop = threading.Event()

    def never_sent():  # a request stream that sends nothing until the test ends
        stop.wait(60)
        yield b""

    with tiny_grpc_server(max_connections=2) as address:
        stalled_channels = [grpc.insecure_channel(address) for _ in range(2)]
        other = grpc.insecure_channel(address)
        live = other.unary_unary(method + "ServerLive", request_serializer=bytes, response_deserializer=bytes)
        try:
            stalled = [
                channel.stream_unary(
                    method + "ModelInfer", request_serializer=bytes, response_deserializer=bytes
                ).future(never_sent(), timeout=60)
                for channel in stalled_channels
            ]
            codes, deadline = [], time.monotonic() + 30  # the answers to ServerLive, in turn
            while not ("RESOURCE_EXHAUSTED" in codes and codes[-1] == "OK"):  # both slots held, then given back
                assert time.monotonic() < deadline, f"not refused then served within 30 s: {codes[-20:]}"
                try:
                    live(b"", timeout=5)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
                time.sleep(0.05)
            for call in stalled:  # cut by the server, not left waiting
                assert call.exception(timeout=30).code() == grpc.StatusCode.UNAVAILABLE
        finally:
            stop.set()
            for channel in [*stalled_channels, other]:
                channel.close()
