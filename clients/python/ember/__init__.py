"""Ember's Python client: predictions from a serving node, row lookups from ps-servers.

    from ember import Predictor, PsClient
    p = Predictor("serving:8500", token=..., ca="ca.crt")
    p.predict([{"I1": "3", "C1": "68fd1e64"}, ["5", "", ...]])   # one probability per row
    ps = PsClient(["ps-0:7070", "ps-1:7070"])                     # or PsClient.from_scheduler(addr)
    ps.lookup("emb", [1, 2, 3])                                    # one list of floats per key

Every failure raises `EmberError`, which carries the gRPC status code (`.code`, a
`grpc.StatusCode`) and a message naming the problem. Bad input found before any call is
`INVALID_ARGUMENT` too, so callers handle one kind of error. The gRPC modules under `ember.v1`
are generated from the repository's protos when the package is built.
"""

from ember.client import EmberError, Predictor, PsClient, slot_of

__all__ = ["EmberError", "Predictor", "PsClient", "slot_of"]
