"""Helper of scripts/bench/topics/run.sh: the pre-encoded Publish body h2load
sends, and one real Publish to check the service answers it.

    bodies.py body OUT TOPIC         write OUT: a framed PublishRequest (100-byte payload)
    bodies.py path                   the HTTP/2 path of TopicService/Publish
    bodies.py verify ADDR TOPIC      one real Publish; prints its id, exit 1 if it fails
    bodies.py length ADDR TOPIC      GetTopicStats: the topic's length

Runs with the repository's .venv (grpcio and the generated `datalayer`
package from clients/python/src). The framing (flag 0, 4-byte big-endian
length, the protobuf) is scripts/bench/grpc_bench.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from grpc_bench import frame  # noqa: E402

from datalayer.topic.v1 import topic_pb2 as tp  # noqa: E402
from datalayer.topic.v1 import topic_pb2_grpc as tp_grpc  # noqa: E402

PAYLOAD = b"x" * 100
PATH = "/datalayer.topic.v1.TopicService/Publish"


def main() -> None:
    cmd, *args = sys.argv[1:] or ["help"]
    if cmd == "body":
        Path(args[0]).write_bytes(frame(tp.PublishRequest(topic=args[1], payload=PAYLOAD)))
    elif cmd == "path":
        print(PATH)
    elif cmd == "verify":
        with grpc.insecure_channel(args[0]) as ch:
            try:
                r = tp_grpc.TopicServiceStub(ch).Publish(
                    tp.PublishRequest(topic=args[1], payload=PAYLOAD), timeout=5
                )
            except grpc.RpcError as e:
                sys.exit(f"verify publish: gRPC {e.code().name}: {e.details()}")
            if "-" not in r.id:
                sys.exit(f"verify publish: no id in {r}")
            print(r.id)
    elif cmd == "length":
        with grpc.insecure_channel(args[0]) as ch:
            r = tp_grpc.TopicServiceStub(ch).GetTopicStats(
                tp.GetTopicStatsRequest(topic=args[1]), timeout=5
            )
            print(r.length if r.exists else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
