"""A gRPC client other than Floodgate's own: Python's grpcio, knowing
nothing of the API but what server reflection tells it.

Usage: grpc_client.py HOST:PORT TOKEN UPSTREAM_HOST

Lists the services through reflection (v1 and v1alpha), builds every message
type from the descriptors reflection returns, performs every call of
floodgate.admin.v1.Admin, and prints a JSON report on stdout.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2 as pb2

SERVICE = "floodgate.admin.v1.Admin"


def reflect(channel, api, request):
    """One request to the reflection service `api` (v1 or v1alpha: the two
    protocols have the same messages, under different package names)."""
    info = channel.stream_stream(
        "/grpc.reflection.%s.ServerReflection/ServerReflectionInfo" % api,
        request_serializer=lambda x: x.SerializeToString(),
        response_deserializer=pb2.ServerReflectionResponse.FromString,
    )
    return list(info(iter([request]), timeout=10))[0]


def services(channel, api):
    r = reflect(channel, api, pb2.ServerReflectionRequest(list_services=""))
    return sorted(s.name for s in r.list_services_response.service)


def load_pool(channel, api):
    """The descriptors of SERVICE and everything it imports, from reflection."""
    r = reflect(channel, api, pb2.ServerReflectionRequest(file_containing_symbol=SERVICE))
    pool = descriptor_pool.DescriptorPool()
    protos = [descriptor_pb2.FileDescriptorProto.FromString(b)
              for b in r.file_descriptor_response.file_descriptor_proto]
    added = set()
    while protos:
        for p in list(protos):
            if all(d in added for d in p.dependency):
                pool.Add(p)
                added.add(p.name)
                protos.remove(p)
    return pool


def main():
    addr, token, upstream = sys.argv[1], sys.argv[2], sys.argv[3]
    channel = grpc.insecure_channel(addr)
    report = {"services": {}, "calls": {}}
    for api in ("v1", "v1alpha"):
        report["services"][api] = services(channel, api)

    pool = load_pool(channel, "v1")
    service = pool.FindServiceByName(SERVICE)
    auth = [("authorization", "Bearer " + token)]

    def call(method, body, metadata=auth):
        m = service.FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        fn = channel.unary_unary(
            "/%s/%s" % (SERVICE, method),
            request_serializer=lambda x: x.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )
        req = json_format.ParseDict(body, req_cls())
        resp = fn(req, metadata=metadata, timeout=10)
        out = json_format.MessageToDict(resp)
        report["calls"][method] = out
        return out

    # Without the token a change is refused.
    try:
        call("SetClientConfig", {"config": {"client_id": "grpc-client", "rpm": 1}}, metadata=[])
        report["unauthenticated"] = "accepted"
    except grpc.RpcError as e:
        report["unauthenticated"] = e.code().name
    report["calls"].pop("SetClientConfig", None)

    # FlowGuard's README calls, with the package name changed.
    call("SetClientConfig", {"config": {"client_id": "grpc-client", "rpm": 150, "tpm": 3000, "enabled": True}})
    call("GetClientConfig", {"client_id": "grpc-client"})
    call("GetClientStats", {"client_id": "grpc-client"})
    call("ListClients", {})
    call("CheckRateLimit", {"client_id": "grpc-client", "tokens": 10})
    call("ListHosts", {})
    call("SetHostLimit", {"host": upstream, "max_connections": 9})
    call("GetBackpressure", {})
    call("Reload", {})
    call("DeleteClient", {"client_id": "grpc-client"})
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
