"""The KServe v2 protocol over gRPC, as Triton serves it, so ``tritonclient.grpc`` works unchanged.

The service is ``inference.GRPCInferenceService`` with the methods this server has a meaning
for: ``ServerLive``, ``ServerReady``, ``ModelReady``, ``ServerMetadata``, ``ModelMetadata``,
``ModelInfer``, ``ModelConfig``, ``ModelStatistics`` and ``RepositoryIndex``. Every answer comes
from :class:`~interop.serving.kserve.KServeModel`, the object behind the HTTP routes: the same
checks, the same batcher, the same statistics; only the framing differs.

No generated code and no ``protoc``: the messages are declared below as field tables (name,
number, type) and built into a descriptor pool at import. On the wire a message is its field
numbers and types, so these tables must agree with the protocol's, field by field; the
message names are ours (``vitjax.kserve.*``), and only the service's path
(``/inference.GRPCInferenceService/<Method>``) is the protocol's. A test compares every table with
tritonclient's own descriptors.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from interop.serving.errors import MalformedRequest, ServeError
from interop.serving.kserve import OUTPUT_NAME, SERVER_METADATA, KServeModel, V2Input

log = logging.getLogger("interop.serving")
SERVICE = "inference.GRPCInferenceService"
PACKAGE = "vitjax.kserve"
F = descriptor_pb2.FieldDescriptorProto
BOOL, INT32, INT64, UINT64, FLOAT, DOUBLE, STRING, BYTES, UINT32, MESSAGE = (
    F.TYPE_BOOL, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_FLOAT, F.TYPE_DOUBLE, F.TYPE_STRING,
    F.TYPE_BYTES, F.TYPE_UINT32, F.TYPE_MESSAGE,
)  # fmt: skip
REPEATED = "repeated"

# message -> [(field, number, type, message type or None, "repeated" or "")]
MESSAGES: dict[str, list[tuple]] = {
    "Empty": [],
    "ServerLiveResponse": [("live", 1, BOOL)],
    "ServerReadyResponse": [("ready", 1, BOOL)],
    "ModelRequest": [("name", 1, STRING), ("version", 2, STRING)],  # ModelReady/Metadata/Config/Statistics
    "ModelReadyResponse": [("ready", 1, BOOL)],
    "ServerMetadataResponse": [("name", 1, STRING), ("version", 2, STRING), ("extensions", 3, STRING, None, REPEATED)],
    "TensorMetadata": [("name", 1, STRING), ("datatype", 2, STRING), ("shape", 3, INT64, None, REPEATED)],
    "ModelMetadataResponse": [
        ("name", 1, STRING),
        ("versions", 2, STRING, None, REPEATED),
        ("platform", 3, STRING),
        ("inputs", 4, MESSAGE, "TensorMetadata", REPEATED),
        ("outputs", 5, MESSAGE, "TensorMetadata", REPEATED),
    ],
    "InferParameter": [
        ("bool_param", 1, BOOL),
        ("int64_param", 2, INT64),
        ("string_param", 3, STRING),
        ("double_param", 4, DOUBLE),
        ("uint64_param", 5, UINT64),
    ],
    "ParameterEntry": [("key", 1, STRING), ("value", 2, MESSAGE, "InferParameter")],  # a map's entries
    "InferTensorContents": [
        ("bool_contents", 1, BOOL, None, REPEATED),
        ("int_contents", 2, INT32, None, REPEATED),
        ("int64_contents", 3, INT64, None, REPEATED),
        ("uint_contents", 4, UINT32, None, REPEATED),
        ("uint64_contents", 5, UINT64, None, REPEATED),
        ("fp32_contents", 6, FLOAT, None, REPEATED),
        ("fp64_contents", 7, DOUBLE, None, REPEATED),
        ("bytes_contents", 8, BYTES, None, REPEATED),
    ],
    "InferInputTensor": [
        ("name", 1, STRING),
        ("datatype", 2, STRING),
        ("shape", 3, INT64, None, REPEATED),
        ("parameters", 4, MESSAGE, "ParameterEntry", REPEATED),
        ("contents", 5, MESSAGE, "InferTensorContents"),
    ],
    "InferRequestedOutputTensor": [("name", 1, STRING), ("parameters", 2, MESSAGE, "ParameterEntry", REPEATED)],
    "ModelInferRequest": [
        ("model_name", 1, STRING),
        ("model_version", 2, STRING),
        ("id", 3, STRING),
        ("parameters", 4, MESSAGE, "ParameterEntry", REPEATED),
        ("inputs", 5, MESSAGE, "InferInputTensor", REPEATED),
        ("outputs", 6, MESSAGE, "InferRequestedOutputTensor", REPEATED),
        ("raw_input_contents", 7, BYTES, None, REPEATED),
    ],
    "InferOutputTensor": [
        ("name", 1, STRING),
        ("datatype", 2, STRING),
        ("shape", 3, INT64, None, REPEATED),
        ("parameters", 4, MESSAGE, "ParameterEntry", REPEATED),
        ("contents", 5, MESSAGE, "InferTensorContents"),
    ],
    "ModelInferResponse": [
        ("model_name", 1, STRING),
        ("model_version", 2, STRING),
        ("id", 3, STRING),
        ("parameters", 4, MESSAGE, "ParameterEntry", REPEATED),
        ("outputs", 5, MESSAGE, "InferOutputTensor", REPEATED),
        ("raw_output_contents", 6, BYTES, None, REPEATED),
    ],
    # Triton's model configuration, the fields a served classifier has (enums travel as varints).
    "ModelInput": [
        ("name", 1, STRING),
        ("data_type", 2, INT32),
        ("format", 3, INT32),
        ("dims", 4, INT64, None, REPEATED),
    ],
    "ModelOutput": [("name", 1, STRING), ("data_type", 2, INT32), ("dims", 3, INT64, None, REPEATED)],
    "ModelDynamicBatching": [
        ("preferred_batch_size", 1, INT32, None, REPEATED),
        ("max_queue_delay_microseconds", 2, UINT64),
    ],
    "ModelInstanceGroup": [("name", 1, STRING), ("count", 2, INT32), ("kind", 4, INT32)],
    "ModelConfig": [
        ("name", 1, STRING),
        ("platform", 2, STRING),
        ("max_batch_size", 4, INT32),
        ("input", 5, MESSAGE, "ModelInput", REPEATED),
        ("output", 6, MESSAGE, "ModelOutput", REPEATED),
        ("instance_group", 7, MESSAGE, "ModelInstanceGroup", REPEATED),
        ("dynamic_batching", 11, MESSAGE, "ModelDynamicBatching"),
        ("backend", 17, STRING),
    ],
    "ModelConfigResponse": [("config", 1, MESSAGE, "ModelConfig")],
    "StatisticDuration": [("count", 1, UINT64), ("ns", 2, UINT64)],
    "InferStatistics": [
        (phase, number, MESSAGE, "StatisticDuration")
        for number, phase in enumerate(
            ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"), 1
        )
    ],
    "ModelStatistics": [
        ("name", 1, STRING),
        ("version", 2, STRING),
        ("last_inference", 3, UINT64),
        ("inference_count", 4, UINT64),
        ("execution_count", 5, UINT64),
        ("inference_stats", 6, MESSAGE, "InferStatistics"),
    ],
    "ModelStatisticsResponse": [("model_stats", 1, MESSAGE, "ModelStatistics", REPEATED)],
    "RepositoryIndexRequest": [("repository_name", 1, STRING), ("ready", 2, BOOL)],
    "ModelIndex": [("name", 1, STRING), ("version", 2, STRING), ("state", 3, STRING), ("reason", 4, STRING)],
    "RepositoryIndexResponse": [("models", 1, MESSAGE, "ModelIndex", REPEATED)],
}
# method -> (request message, response message)
METHODS = {
    "ServerLive": ("Empty", "ServerLiveResponse"),
    "ServerReady": ("Empty", "ServerReadyResponse"),
    "ModelReady": ("ModelRequest", "ModelReadyResponse"),
    "ServerMetadata": ("Empty", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelConfig": ("ModelRequest", "ModelConfigResponse"),
    "ModelStatistics": ("ModelRequest", "ModelStatisticsResponse"),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse"),
}
# Triton's enums, by name (model_config.proto's DataType, ModelInput.Format, ModelInstanceGroup.Kind)
DATA_TYPES = {"TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP16": 10, "TYPE_FP32": 11,
              "TYPE_FP64": 12, "TYPE_STRING": 13}  # fmt: skip
FORMATS = {"FORMAT_NONE": 0, "FORMAT_NHWC": 1, "FORMAT_NCHW": 2}
KINDS = {"KIND_AUTO": 0, "KIND_GPU": 1, "KIND_CPU": 2}
# HTTP status of our errors -> gRPC status code
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
                429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
                504: grpc.StatusCode.DEADLINE_EXCEEDED}  # fmt: skip


def _build_messages() -> dict[str, Any]:
    """The message classes of :data:`MESSAGES`, from one file descriptor built here."""
    file = descriptor_pb2.FileDescriptorProto(name="vitjax/kserve_v2.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, *rest in fields:
            type_name, repeated = (rest + [None, ""])[:2]
            entry = message.field.add(name=field, number=number, type=kind)
            entry.label = F.LABEL_REPEATED if repeated == REPEATED else F.LABEL_OPTIONAL
            if type_name:
                entry.type_name = f".{PACKAGE}.{type_name}"
            if name == "InferParameter":  # one value per parameter, of one of five types
                entry.oneof_index = 0
        if name == "InferParameter":
            message.oneof_decl.add(name="parameter_choice")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES}


M = _build_messages()


def _parameter_value(parameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _parameters(entries) -> dict[str, Any]:
    return {entry.key: _parameter_value(entry.value) for entry in entries}


class InferenceService:
    """The gRPC methods, each a thin framing around :class:`KServeModel`."""

    def __init__(self, v2: KServeModel):
        self.v2 = v2

    async def ServerLive(self, request, context):
        return M["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, context):
        return M["ServerReadyResponse"](ready=self.v2.is_ready())

    async def ModelReady(self, request, context):
        self.v2.check(request.name, request.version)
        return M["ModelReadyResponse"](ready=self.v2.is_ready())

    async def ServerMetadata(self, request, context):
        return M["ServerMetadataResponse"](**SERVER_METADATA)

    async def ModelMetadata(self, request, context):
        self.v2.check(request.name, request.version)
        meta = self.v2.metadata()
        return M["ModelMetadataResponse"](
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[M["TensorMetadata"](**t) for t in meta["inputs"]],
            outputs=[M["TensorMetadata"](**t) for t in meta["outputs"]],
        )

    async def ModelConfig(self, request, context):
        self.v2.check(request.name, request.version)
        c = self.v2.config_()
        batching = c["dynamic_batching"]
        config = M["ModelConfig"](
            name=c["name"],
            platform=c["platform"],
            backend=c["backend"],
            max_batch_size=c["max_batch_size"],
            input=[
                M["ModelInput"](
                    name=i["name"],
                    data_type=DATA_TYPES[i["data_type"]],
                    format=FORMATS[i.get("format", "FORMAT_NONE")],
                    dims=i["dims"],
                )
                for i in c["input"]
            ],  # fmt: skip
            output=[
                M["ModelOutput"](name=o["name"], data_type=DATA_TYPES[o["data_type"]], dims=o["dims"])
                for o in c["output"]
            ],
            instance_group=[
                M["ModelInstanceGroup"](count=g["count"], kind=KINDS[g["kind"]]) for g in c["instance_group"]
            ],
            dynamic_batching=M["ModelDynamicBatching"](
                preferred_batch_size=batching["preferred_batch_size"],
                max_queue_delay_microseconds=batching["max_queue_delay_microseconds"],
            ),
        )
        return M["ModelConfigResponse"](config=config)

    async def ModelStatistics(self, request, context):
        if request.name:
            self.v2.check(request.name, request.version)
        stats = []
        for s in self.v2.stats()["model_stats"]:
            phases = {p: M["StatisticDuration"](count=v["count"], ns=v["ns"]) for p, v in s["inference_stats"].items()}
            stats.append(
                M["ModelStatistics"](
                    name=s["name"],
                    version=s["version"],
                    last_inference=s["last_inference"],
                    inference_count=s["inference_count"],
                    execution_count=s["execution_count"],
                    inference_stats=M["InferStatistics"](**phases),
                )
            )
        return M["ModelStatisticsResponse"](model_stats=stats)

    async def RepositoryIndex(self, request, context):
        models = [M["ModelIndex"](**entry) for entry in self.v2.repository_index()]
        return M["RepositoryIndexResponse"](models=[m for m in models if not request.ready or m.state == "READY"])

    async def ModelInfer(self, request, context):
        v2 = self.v2
        v2.check(request.model_name, request.model_version)
        if not v2.is_ready():
            raise _Unavailable("model is warming up or the server is shutting down")
        if len(request.inputs) != 1:
            raise MalformedRequest(f"{len(request.inputs)} inputs; a v2 request to this model has one")
        tensor = request.inputs[0]
        if len(request.raw_input_contents) > 1:
            raise MalformedRequest(f"{len(request.raw_input_contents)} raw_input_contents for one input")
        raw = request.raw_input_contents[0] if request.raw_input_contents else None
        contents = tensor.contents
        data, blobs = None, None
        if raw is None:
            if tensor.datatype == "BYTES":
                blobs = list(contents.bytes_contents)
            elif tensor.datatype == "UINT8":
                data = list(contents.uint_contents)
            else:
                data = list(contents.fp32_contents)
        top_k = v2.output_request(
            [o.name for o in request.outputs],
            _parameters(request.outputs[0].parameters).get("classification") if request.outputs else None,
        )
        result = await v2.infer(
            V2Input(tensor.name, tensor.datatype, list(tensor.shape), data=data, raw=raw, blobs=blobs), top_k
        )
        output = M["InferOutputTensor"](name=OUTPUT_NAME, datatype=result.datatype, shape=result.shape)
        return M["ModelInferResponse"](
            model_name=v2.model.name,
            model_version="1",
            id=request.id,
            outputs=[output],
            raw_output_contents=[result.raw_bytes()],
        )


class _Unavailable(ServeError):
    status, kind = 503, "not_ready"


def _handler(service: InferenceService, method: str):
    request_type, response_type = (M[name] for name in METHODS[method])
    call = getattr(service, method)

    async def handle(request, context):
        try:
            return await call(request, context)
        except ServeError as e:
            await context.abort(STATUS_CODES.get(e.status, grpc.StatusCode.INTERNAL), e.reason)
        except Exception as e:  # noqa: BLE001 - an engine failure is one request's INTERNAL, not the server's end
            log.exception("gRPC %s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}")

    return grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
    )


def connection_options(config) -> list[tuple[str, int]]:
    """grpcio's per-connection limits from the server's HTTP ones (:class:`~interop.serving.config.ServeConfig`).

    gRPC runs over HTTP/2 in grpcio's own transport, which our HTTP connection guard never sees,
    so the same limits are set through its channel arguments:

    - a connection must finish its HTTP/2 handshake within ``header_timeout_s`` (a silent TCP
      connection is closed then; grpcio's default is 120 s);
    - a connection with no call in progress for ``keep_alive_timeout_s`` is sent GOAWAY and
      closed (clients reconnect on their next call; grpcio's default: never);
    - every connection is asked to go away after ``header_timeout_s + body_timeout_s`` (grpcio
      adds up to 10% jitter) and is closed ``request_timeout_s`` after that, calls still open
      included, so a call whose client stalls its request message holds its slot of
      ``max_connections`` for a bounded time, not forever (grpcio's default: never);
      well-behaved clients reconnect on GOAWAY and their calls in progress finish;
    - the server pings every connection each ``body_timeout_s``; one whose peer does not answer
      within ``header_timeout_s`` (a peer gone without closing) is dropped with its calls.
    """
    ms = lambda seconds: max(1, int(seconds * 1000))  # noqa: E731
    return [
        ("grpc.server_handshake_timeout_ms", ms(config.header_timeout_s)),
        ("grpc.max_connection_idle_ms", ms(config.keep_alive_timeout_s)),
        ("grpc.max_connection_age_ms", ms(config.header_timeout_s + config.body_timeout_s)),
        ("grpc.max_connection_age_grace_ms", ms(config.request_timeout_s)),
        ("grpc.keepalive_time_ms", ms(config.body_timeout_s)),
        ("grpc.keepalive_timeout_ms", ms(config.header_timeout_s)),
    ]


def create_grpc_server(v2: KServeModel, *, max_message_bytes: int, max_concurrent_rpcs: int) -> grpc.aio.Server:
    """A ``grpc.aio`` server with the inference service (not yet bound or started), with the connection
    limits of :func:`connection_options` from the model's server configuration."""
    service = InferenceService(v2)
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        *connection_options(v2.config),
    ]
    # At most max_concurrent_rpcs calls at once (the rest get RESOURCE_EXHAUSTED).
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
    handlers = {method: _handler(service, method) for method in METHODS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return server
