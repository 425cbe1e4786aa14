"""Calls Envoy's RateLimitService with two clients nobody in this project wrote: the grpcio stub and
the grpclib (asyncio) stub of the envoy-data-plane package. Prints one JSON line per call.

usage: rls_client.py HOST:PORT DOMAIN KEY=VALUE[,KEY=VALUE...][;KEY=VALUE...] CALLS
(`;` separates descriptors)
"""
import asyncio
import json
import sys

import grpc
from grpclib.client import Channel
from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
    RateLimitDescriptor,
    RateLimitDescriptorEntry,
)
from envoy_data_plane.envoy.service.ratelimit.v3 import (
    RateLimitRequest,
    RateLimitResponseCode,
    RateLimitServiceAsyncStub,
    RateLimitServiceSyncStub,
)


def request(domain, spec):
    descriptors = []
    for entries in spec.split(";"):
        pairs = [e.split("=", 1) for e in entries.split(",")]
        descriptors.append(
            RateLimitDescriptor(entries=[RateLimitDescriptorEntry(key=k, value=v) for k, v in pairs])
        )
    return RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=1)


def seconds(duration):
    return duration.total_seconds() if duration is not None else None


def line(client, response):
    status = response.statuses[0]
    reset = status.duration_until_reset
    print(json.dumps({
        "client": client,
        "overall": RateLimitResponseCode(response.overall_code).name,
        "remaining": status.limit_remaining,
        "reset_s": seconds(reset),
        "headers": {h.key: h.value for h in response.response_headers_to_add},
        "statuses": [
            {
                "code": RateLimitResponseCode(s.code).name,
                "remaining": s.limit_remaining,
                "reset_s": seconds(s.duration_until_reset),
            }
            for s in response.statuses
        ],
    }), flush=True)


async def with_grpclib(host, port, req, calls):
    async with Channel(host, port) as channel:
        stub = RateLimitServiceAsyncStub(channel)
        for _ in range(calls):
            line("grpclib", await stub.should_rate_limit(req, timeout=5))


def main():
    target, domain, entries, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    req = request(domain, entries)
    host, port = target.rsplit(":", 1)
    # Half the calls through grpcio, half through grpclib.
    with grpc.insecure_channel(target) as channel:
        stub = RateLimitServiceSyncStub(channel)
        for _ in range(calls // 2):
            line("grpcio", stub.should_rate_limit(req))
    asyncio.run(with_grpclib(host, int(port), req, calls - calls // 2))


if __name__ == "__main__":
    main()
