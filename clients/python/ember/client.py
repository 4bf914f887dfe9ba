"""The hand-written layer over the generated stubs: connection and credentials, input checks,
key routing, and one error type.

Invariants kept in step with the Rust side:
- a key's slot is `mix64(key) % num_slots` (crates/core/src/hash.rs); with a list of ps
  addresses, slots are spread round-robin over them (as `--ps A,B` does), and with a scheduler,
  its shard map decides;
- tokens travel as `authorization: Bearer TOKEN` metadata;
- row values are little-endian f32, `dim` per key, in request order.
"""

import array
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc

from ember.v1 import ps_pb2, ps_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, serving_pb2, serving_pb2_grpc

DEFAULT_SLOTS = 1024
_MASK = (1 << 64) - 1


class EmberError(Exception):
    """A failed call or refused input: `.code` is a `grpc.StatusCode`, `.message` says what."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _invalid(message):
    return EmberError(grpc.StatusCode.INVALID_ARGUMENT, message)


def mix64(z):
    """The splitmix64 finalizer, as the servers route keys with it."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def slot_of(key, num_slots=DEFAULT_SLOTS):
    """The virtual slot that owns `key` (a uint64)."""
    return mix64(key) % max(num_slots, 1)


class _Connection:
    """One channel per address, with the credentials and token every call carries."""

    def __init__(self, token, ca, domain, cert, key, timeout):
        if token is not None and (not isinstance(token, str) or not token.isprintable() or not token):
            raise _invalid("a token must be a non-empty printable string")
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.timeout = timeout
        self.options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
        if domain:
            self.options.append(("grpc.ssl_target_name_override", domain))
        self.credentials = None
        if ca is not None:
            self.credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca, "ca"),
                private_key=_read(key, "key") if key else None,
                certificate_chain=_read(cert, "cert") if cert else None,
            )
        elif cert or key or domain:
            raise _invalid("cert, key and domain need ca (the CA that signed the servers' certificates)")
        self.channels = {}

    def channel(self, addr):
        if addr not in self.channels:
            if self.credentials is not None:
                self.channels[addr] = grpc.secure_channel(addr, self.credentials, options=self.options)
            else:
                self.channels[addr] = grpc.insecure_channel(addr, options=self.options)
        return self.channels[addr]

    def call(self, what, addr, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise EmberError(e.code(), f"{what} on {addr}: {e.details()}") from None

    def close(self):
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise _invalid(f"{what} file {path}: {e.strerror}") from None


class Predictor:
    """Predictions from one serving node (gRPC `ember.v1.Serving`).

    `model` names the model when the node serves several; `token` is a serving or reader role
    token; `ca` (with optional `domain`, `cert`, `key`) turns TLS on. Usable as a context manager.
    """

    def __init__(self, addr, *, model="", token=None, ca=None, domain=None, cert=None, key=None, timeout=10.0):
        self.addr = addr
        self.model = model
        self._conn = _Connection(token, ca, domain, cert, key, timeout)
        self._stub = serving_pb2_grpc.ServingStub(self._conn.channel(addr))

    def status(self):
        """The served model: version, name, input fields (in positional order), tables."""
        reply = self._conn.call("ModelStatus", self.addr, self._stub.ModelStatus,
                                serving_pb2.ModelStatusRequest(model=self.model))
        return {
            "version": reply.version,
            "name": reply.name,
            "fields": [f.name for f in reply.fields],
            "tables": list(reply.tables),
            "kept_versions": list(reply.kept_versions),
            "data_format": reply.data_format,
        }

    def predict(self, rows, *, version=0):
        """One probability per row (a list of per-task tuples for a multi-task model).

        A row is a dict of raw values by field name, as in the training data, or a list of raw
        values in the model's field order (`status()["fields"]`); None or "" is a missing value.
        `version` asks for a version the node holds (0: the current one).
        """
        request = serving_pb2.PredictRequest(model=self.model, samples=_samples(rows), version=_uint(version, "version"))
        reply = self._conn.call("Predict", self.addr, self._stub.Predict, request)
        probs, tasks = list(reply.probabilities), max(reply.tasks, 1)
        if len(probs) != len(request.samples) * tasks:
            raise EmberError(grpc.StatusCode.INTERNAL,
                             f"{len(probs)} probabilities for {len(request.samples)} rows x {tasks} tasks")
        if tasks == 1:
            return probs
        return [tuple(probs[i * tasks:(i + 1) * tasks]) for i in range(len(request.samples))]

    def close(self):
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cell(value, where):
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _invalid(f"{where} is a {type(value).__name__}; give a string or a number")
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


def _samples(rows):
    if isinstance(rows, (str, bytes, dict)) or not hasattr(rows, "__iter__"):
        raise _invalid(f"rows must be a list of rows, not a {type(rows).__name__}")
    samples = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            fields = {}
            for name, value in row.items():
                if not isinstance(name, str):
                    raise _invalid(f"row {i}: field name {name!r} is not a string")
                fields[name] = _cell(value, f"row {i} field {name}")
            samples.append(serving_pb2.Sample(fields=fields))
        elif isinstance(row, (list, tuple)):
            samples.append(serving_pb2.Sample(row=[_cell(v, f"row {i} value {j}") for j, v in enumerate(row)]))
        else:
            raise _invalid(f"row {i} is a {type(row).__name__}; give a dict of field -> value or a list "
                           "in the model's field order")
    if not samples:
        raise _invalid("no rows to predict")
    return samples


def _uint(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > _MASK:
        raise _invalid(f"{what} must be an integer in 0..2^64, not {value!r}")
    return value


def _key(value, i):
    """A feature id as the servers store it: uint64; int64 ids (negative) in two's complement."""
    if isinstance(value, bool) or not isinstance(value, int) or value < -(1 << 63) or value > _MASK:
        raise _invalid(f"key {i} ({value!r}) is not an int64 or uint64 feature id")
    return value & _MASK


class PsClient:
    """Row lookups from ps-servers (gRPC `ember.v1.ParameterServer/Lookup`), routed by slot.

    `addrs`: every ps-server of the cluster, as `--ps A,B` takes them (slots round-robin), or use
    `PsClient.from_scheduler(addr)` for the scheduler's shard map. `token` is a worker, serving
    or reader token. Lookups never create rows: a key without a row reads the initializer's value.
    """

    def __init__(self, addrs, *, owners=None, token=None, ca=None, domain=None, cert=None, key=None, timeout=10.0,
                 num_slots=DEFAULT_SLOTS):
        if isinstance(addrs, str):
            addrs = [a for a in addrs.split(",") if a]
        self.addrs = list(addrs)
        if not self.addrs:
            raise _invalid("no ps-server addresses")
        if owners is None:
            owners = [s % len(self.addrs) for s in range(num_slots)]
        if not owners or any(o >= len(self.addrs) for o in owners):
            raise _invalid("the shard map names a server that is not in addrs")
        self.owners = list(owners)
        self._conn = _Connection(token, ca, domain, cert, key, timeout)
        self._stubs = [ps_pb2_grpc.ParameterServerStub(self._conn.channel(a)) for a in self.addrs]
        self._pool = ThreadPoolExecutor(max_workers=min(len(self.addrs), 16))

    @classmethod
    def from_scheduler(cls, scheduler, **kwargs):
        """The servers and slot owners of the scheduler's current shard map."""
        conn = _Connection(kwargs.get("token"), kwargs.get("ca"), kwargs.get("domain"), kwargs.get("cert"),
                           kwargs.get("key"), kwargs.get("timeout", 10.0))
        try:
            stub = scheduler_pb2_grpc.SchedulerStub(conn.channel(scheduler))
            reply = conn.call("GetShardMap", scheduler, stub.GetShardMap, scheduler_pb2.GetShardMapRequest())
        finally:
            conn.close()
        if not reply.endpoints:
            raise EmberError(grpc.StatusCode.UNAVAILABLE, f"scheduler {scheduler} knows no ps-servers yet")
        return cls(list(reply.endpoints), owners=list(reply.owners), **kwargs)

    def lookup(self, table, keys):
        """One list of `dim` floats per key, in the order given."""
        if not isinstance(table, str) or not table:
            raise _invalid(f"table must be a non-empty string, not {table!r}")
        if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
            raise _invalid(f"keys must be a list of feature ids, not a {type(keys).__name__}")
        keys = [_key(k, i) for i, k in enumerate(keys)]
        by_server = {}
        for i, k in enumerate(keys):
            by_server.setdefault(self.owners[slot_of(k, len(self.owners))], []).append(i)

        def ask(server):
            positions = by_server[server]
            request = ps_pb2.LookupRequest(table=table, keys=[keys[i] for i in positions])
            return server, self._conn.call("Lookup", self.addrs[server], self._stubs[server].Lookup, request)

        rows = [None] * len(keys)
        for server, reply in self._pool.map(ask, list(by_server)):
            values = array.array("f")
            values.frombytes(reply.values)
            if sys.byteorder == "big":
                values.byteswap()
            dim = reply.dim
            positions = by_server[server]
            if len(values) != dim * len(positions):
                raise EmberError(grpc.StatusCode.INTERNAL,
                                 f"{self.addrs[server]} sent {len(values)} values for {len(positions)} keys of dim {dim}")
            for n, i in enumerate(positions):
                rows[i] = values[n * dim:(n + 1) * dim].tolist()
        return rows

    def close(self):
        self._pool.shutdown(wait=False)
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
