"""A generic gRPC client for netdb's API, as a user's tool would be: no
generated stubs, every message type comes from the agent's reflection
service (v1alpha, which grpcio-reflection's descriptor database asks), and
the channel keeps grpcio's default options.

Run by agent/tests/interop.rs:
    python grpc_client.py TARGET --members n1,n2 --network NET --tag T [--hard]
Exits non-zero with a traceback when anything is not as expected; prints
one "ok ..." line per check.
"""

import argparse
import concurrent.futures
import queue
import threading
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "netdb.api.v1.Netdb"


class Api:
    """The Netdb service, its methods built from reflected descriptors."""

    def __init__(self, channel):
        self.channel = channel
        db = ProtoReflectionDescriptorDatabase(channel)
        self.services = set(db.get_services())
        pool = descriptor_pool.DescriptorPool(db)
        self.service = pool.FindServiceByName(SERVICE)

    def message(self, method, **fields):
        desc = self.service.methods_by_name[method].input_type
        return message_factory.GetMessageClass(desc)(**fields)

    def _reply_class(self, method):
        return message_factory.GetMessageClass(self.service.methods_by_name[method].output_type)

    def unary(self, method):
        return self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self._reply_class(method).FromString,
        )

    def call(self, method, metadata=None, **fields):
        return self.unary(method)(self.message(method, **fields), metadata=metadata, timeout=30)

    def stream(self, method, **fields):
        rpc = self.channel.unary_stream(
            f"/{SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self._reply_class(method).FromString,
        )
        return rpc(self.message(method, **fields))

    def import_(self, requests):
        """A client-streaming Import of put requests."""
        rpc = self.channel.stream_unary(
            f"/{SERVICE}/Import",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self._reply_class("Import").FromString,
        )
        return rpc(iter(requests), timeout=30)

    def put_request(self, network, table, entries):
        req = self.message("Put", network=network, table=table)
        for k, v in entries:
            req.entries.add(key=k, value=v)
        return req

    def put(self, network, table, entries):
        return self.unary("Put")(self.put_request(network, table, entries), timeout=30)


class Watcher:
    """A Watch stream read on its own thread into a queue."""

    def __init__(self, api, network, table):
        self.call = api.stream("Watch", network=network, table=table)
        self.events = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for ev in self.call:
                self.events.put((ev.event, ev.entry.key, bytes(ev.entry.value)))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.events.put(("error", str(e), b""))

    def expect(self, wanted, timeout=20):
        """Waits until every (event, key) in `wanted` arrived, in order."""
        wanted = list(wanted)
        seen = []
        deadline = time.monotonic() + timeout
        while wanted:
            left = deadline - time.monotonic()
            assert left > 0, f"watch: still waiting for {wanted[:3]}... after {seen[-5:]}"
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            assert ev[0] != "error", f"watch failed: {ev[1]}"
            seen.append(ev[:2])
            if ev[:2] == wanted[0]:
                wanted.pop(0)
        return seen

    def close(self):
        self.call.cancel()
        self.thread.join(5)


def basic(api, members, network, tag):
    assert SERVICE in api.services, api.services
    assert "grpc.reflection.v1alpha.ServerReflection" in api.services, api.services
    print("ok reflection v1alpha lists", sorted(api.services))
    # v1 has the same messages as v1alpha; grpcio-reflection only ships the
    # latter's, which serve for both on the wire.
    v1 = api.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = list(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30))
    v1_services = {s.name for s in replies[0].list_services_response.service}
    assert SERVICE in v1_services, replies
    print("ok reflection v1 lists", sorted(v1_services))

    names = {m.name for m in api.call("Members").members}
    assert set(members) <= names, f"members {names}, expected {members}"
    print("ok members", sorted(names))

    api.call("JoinNetwork", network=network)
    # Tables of their own: entries belong to the agent that wrote them, and
    # each run talks to another agent of the same cluster.
    table = f"t-{tag}"
    w = Watcher(api, network, table)
    try:
        api.put(network, table, [("k1", b"v1"), ("k2", b"v2")])
        api.put(network, table, [("k1", b"v1b")])
        api.call("Delete", network=network, table=table, key="k2")
        w.expect([("create", "k1"), ("create", "k2"), ("update", "k1"), ("delete", "k2")])
    finally:
        w.close()
    got = api.call("Get", network=network, table=table, key="k1")
    assert got.value == b"v1b", got
    print("ok watch saw create, update, delete")

    # A client stream of 50 requests of 100 entries, then one that stops at
    # a refused table: the error counts what the whole stream wrote.
    batch = lambda b: api.put_request(
        network, f"i-{tag}", [(f"i{b:02}-{i:03}", b"x" * 100) for i in range(100)]
    )
    assert api.import_(batch(b) for b in range(50)).written == 5000
    dump = api.call("Dump", network=network, table=f"i-{tag}").entries
    assert len(dump) == 5000, len(dump)
    bad = api.put_request(network, "", [("k", b"v")])
    try:
        api.import_([batch(50), bad, batch(51)])
        raise AssertionError("an import into an invalid table was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        assert "100 entries written before it" in e.details(), e.details()
        stopped = e.details()
    print("ok import streamed 5,000 entries; a refused one stops it:", stopped)


def hard(api, network):
    # Several MB through the socket in each direction: requests and the
    # dump reply span hundreds of DATA frames.
    value = lambda i: (f"{i:05}-".encode() * 2000)[:10_000]
    for batch in range(3):
        keys = range(batch * 100, (batch + 1) * 100)
        api.put(network, "big", [(f"b{i:05}", value(i)) for i in keys])
    dump = api.call("Dump", network=network, table="big").entries
    assert len(dump) == 300, len(dump)
    for e in dump:
        assert e.value == value(int(e.key[1:])), e.key
    print("ok 3 MB put and dumped intact")

    # 100 concurrent calls on one channel, hence one connection.
    members = api.unary("Members")
    futures = [members.future(api.message("Members"), timeout=30) for _ in range(100)]
    assert all(f.result().members for f in futures)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        dumps = list(pool.map(lambda _: len(api.call("Dump", network=network, table="big").entries), range(20)))
    assert dumps == [300] * 20, dumps
    print("ok 100 concurrent calls and 20 concurrent 3 MB dumps")

    # Metadata under the server's 16 KiB header list limit works; over it
    # the server refuses that one call (HTTP 431) and the connection and
    # channel stay usable.
    api.call("Members", metadata=[("x-medium", "m" * 12_000)])
    print("ok 12 KB of metadata")
    try:
        api.call("Members", metadata=[("x-big", "".join(f"{i:x}" for i in range(8000)))])
        raise AssertionError("a 30 KB header list was accepted over a 16 KiB limit")
    except grpc.RpcError as e:
        # 431 is the server's answer to this one stream; a block that
        # reached the server mangled would end the connection instead.
        assert "431" in (e.details() or ""), (e.code(), e.details())
        print("ok 30 KB of metadata refused:", e.code(), e.details())
    assert api.call("Members").members
    print("ok the channel still works")

    # A long streaming call: 400 changes over a few seconds, all seen.
    w = Watcher(api, network, "long")
    try:
        for batch in range(20):
            api.put(network, "long", [(f"l{batch:02}-{i:02}", b"x" * 100) for i in range(20)])
            time.sleep(0.15)
        w.expect([("create", f"l{b:02}-{i:02}") for b in range(20) for i in range(20)], timeout=30)
    finally:
        w.close()
    print("ok a watch streamed 400 events over 3 s")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--members", required=True)
    p.add_argument("--network", required=True)
    p.add_argument("--tag", required=True, help="names this run's tables")
    p.add_argument("--hard", action="store_true")
    a = p.parse_args()
    # Default channel options on purpose: this is what a user's tool does.
    with grpc.insecure_channel(a.target) as channel:
        api = Api(channel)
        basic(api, a.members.split(","), a.network, a.tag)
        if a.hard:
            hard(api, a.network)
    print("ALL OK")


if __name__ == "__main__":
    main()
