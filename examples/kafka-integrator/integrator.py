#!/usr/bin/env python3
"""A Kafka-native integrator of Esh3ar, written only against the public contract (docs/topics.md):
confluent-kafka for Kafka, fastavro for Avro, the platform's schema-registry endpoints for the
schemas, and a WebSocket client standing in for the recipient's app.

It produces one SendRequest to esh.ingest.v1, encoded with the schema it fetched by subject,
then reads esh.status.v1, decoding each record with the schema its id names, until it has seen
its request's IngestOutcome (the message id) and, after the recipient's socket acked the
message, the message's `delivered` StatusEvent. Exits 0 on success, 1 with the reason otherwise.

    integrator.py --brokers 127.0.0.1:9092 --http http://127.0.0.1:8080 \
        --principal shop-integration --sender shop --recipient-token TOKEN --recipient mona
"""

import argparse
import asyncio
import io
import json
import struct
import sys
import time
import urllib.request
import uuid

import fastavro
import websockets
from confluent_kafka import Consumer, Producer

MAGIC = 0


class Registry:
    """The platform's schema-registry endpoints, with parsed schemas cached by id."""

    def __init__(self, base):
        self.base = base.rstrip("/")
        self.by_id = {}

    def _get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=10) as answer:
            return json.load(answer)

    def latest(self, subject):
        answer = self._get(f"/v1/schemas/subjects/{subject}/versions/latest")
        schema = fastavro.parse_schema(json.loads(answer["schema"]))
        self.by_id[answer["id"]] = schema
        return answer["id"], schema

    def schema(self, schema_id):
        if schema_id not in self.by_id:
            answer = self._get(f"/v1/schemas/ids/{schema_id}")
            self.by_id[schema_id] = fastavro.parse_schema(json.loads(answer["schema"]))
        return self.by_id[schema_id]

    def encode(self, schema_id, schema, record):
        out = io.BytesIO()
        out.write(struct.pack(">bI", MAGIC, schema_id))
        fastavro.schemaless_writer(out, schema, record)
        return out.getvalue()

    def decode(self, value):
        magic, schema_id = struct.unpack(">bI", value[:5])
        if magic != MAGIC:
            raise ValueError(f"magic byte {magic}")
        source = io.BytesIO(value[5:])
        record = fastavro.schemaless_reader(source, self.schema(schema_id))
        if source.read():
            raise ValueError("bytes after the datum")
        return record


def fail(why):
    print(f"integrator: {why}", file=sys.stderr)
    sys.exit(1)


async def ack_first_message(ws_url, token, wait_s):
    """Connects as the recipient and acks the first message frame; its id."""
    async with websockets.connect(ws_url, additional_headers={"authorization": f"Bearer {token}"}) as socket:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            frame = json.loads(await asyncio.wait_for(socket.recv(), deadline - time.monotonic()))
            if frame["type"] == "message":
                message_id = frame["message"]["id"]
                await socket.send(json.dumps({"type": "ack", "message_ids": [message_id]}))
                # The ack's effect is a status record; a ping's pong says the ack was read.
                await socket.send(json.dumps({"type": "ping"}))
                while json.loads(await socket.recv())["type"] != "pong":
                    pass
                return message_id
    fail("no message frame reached the recipient's socket")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--http", required=True, help="the platform's HTTP base URL")
    parser.add_argument("--principal", required=True)
    parser.add_argument("--sender", required=True)
    parser.add_argument("--recipient", required=True)
    parser.add_argument("--recipient-token", required=True)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for each step")
    args = parser.parse_args()

    registry = Registry(args.http)
    request_id = f"req-{uuid.uuid4()}"
    content = f"sent from Kafka {request_id}"

    # Read the status topic from its start with a group of our own, before producing.
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": f"integrator-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe(["esh.status.v1"])

    schema_id, schema = registry.latest("esh.ingest.v1-value")
    value = registry.encode(schema_id, schema, {
        "request_id": request_id,
        "principal": args.principal,
        "idempotency_key": None,
        "kind": "one_way",
        "sender_id": args.sender,
        "recipient_ids": [args.recipient],
        "content": content,
        "media_ids": [],
        "priority": None,
    })
    producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True, "acks": "all"})
    delivered = []
    producer.produce("esh.ingest.v1", key=args.sender.encode(), value=value,
                     on_delivery=lambda error, _record: delivered.append(error))
    producer.flush(args.wait)
    if delivered != [None]:
        fail(f"the broker did not take the SendRequest: {delivered}")
    print(f"integrator: produced SendRequest {request_id} with schema id {schema_id}")

    ws_url = args.http.replace("http://", "ws://", 1).rstrip("/") + "/v1/ws"
    acked = asyncio.run(ack_first_message(ws_url, args.recipient_token, args.wait))

    # Partitions are read in no particular order: the outcome (keyed by the request id) and
    # the statuses (keyed by the message id) may come in either order.
    message_id = None
    statuses = {}
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline and "delivered" not in statuses.get(message_id, []):
        record = consumer.poll(1.0)
        if record is None:
            continue
        if record.error():
            fail(f"consumer error: {record.error()}")
        event = registry.decode(record.value())
        if event.get("key") == request_id:
            if event.get("error"):
                fail(f"the platform refused the request: {event['error']}")
            message_id = event["message_id"]
            print(f"integrator: outcome of {request_id}: message {message_id}")
        elif "status" in event:
            if record.key().decode() != event["message_id"]:
                fail(f"a status record keyed {record.key()!r}, not by its message id")
            statuses.setdefault(event["message_id"], []).append(event["status"])
    consumer.close()
    if message_id is None:
        fail("no IngestOutcome for the request on esh.status.v1")
    print(f"integrator: statuses of {message_id}: {statuses.get(message_id, [])}")
    if acked != message_id:
        fail(f"the socket got message {acked}, the outcome names {message_id}")
    if "delivered" not in statuses.get(message_id, []):
        fail(f"no delivered status for {message_id}")
    print("integrator: ok")


if __name__ == "__main__":
    main()
