"""The Open Inference Protocol over gRPC (KServe v2, Triton's ``GRPCInferenceService``): ``--grpc-port``.

- :mod:`wsserve.oipgrpc.convert` - the messages, sans-I/O (requests checked by
  :mod:`wsserve.rest.oip`'s rules, responses, status codes);
- :mod:`wsserve.oipgrpc.service` - :class:`~wsserve.oipgrpc.service.GrpcFrontend`,
  the ``grpc.aio`` server the :class:`~wsserve.server.Server` starts on its loop.

Needs the ``grpc`` extra (``pip install 'wsserve[grpc]'``: grpcio, and
tritonclient[grpc] for the generated service stubs); imported only when a
server is given ``--grpc-port``.  docs/PROTOCOL.md, "gRPC", describes the wire.
"""
