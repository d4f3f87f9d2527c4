#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from real encodings.

Sources: OpenIM's own records in tests/data/openim/ (*.bin and the hex and
fields of vectors.json), the shipped config/ folder, and RESP commands as
redis-rs sends them. Deterministic: running it again gives the same files
(named by the SHA-1 of their content, as libFuzzer names its own). The
`pipeline` and `headers` targets take structured (`arbitrary`) input, which
has no textual form: their checked-in seeds are inputs the fuzzer found,
minimised, and are left alone here; only a missing directory gets seeded
pseudo-random bytes to start from.

Usage: python3 fuzz/make_corpus.py   (from anywhere; rewrites the corpora of
the byte-input targets)
"""

import base64
import hashlib
import json
import random
import re
import shutil
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
DATA = ROOT / "tests" / "data" / "openim"
CONFIG = ROOT / "config"
CORPUS = FUZZ / "corpus"

# The order of the config_yaml target's FILES table.
CONFIG_FILES = [
    "openim-msgtransfer.yml",
    "kafka.yml",
    "redis.yml",
    "mongodb.yml",
    "share.yml",
    "webhooks.yml",
    "log.yml",
]


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, value):
    return varint(num << 3) + varint(value)


def field_bytes(num, data):
    return varint((num << 3) | 2) + varint(len(data)) + data


def mongo_record(last_seq, conv, msgs):
    out = b""
    if last_seq:
        out += field_varint(1, last_seq)
    if conv:
        out += field_bytes(2, conv.encode())
    for m in msgs:
        out += field_bytes(3, m)
    return out


def with_seq(msg, seq):
    # A later occurrence of a scalar field wins in protobuf.
    return msg + field_varint(14, seq)


def write(target, items):
    d = CORPUS / target
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for data in items:
        if isinstance(data, str):
            data = data.encode()
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    vectors = json.loads((DATA / "vectors.json").read_text())["cases"]
    bins = {c["file"]: bytes.fromhex(c["hex"]) for c in vectors}
    for f in DATA.glob("*.bin"):
        assert bins.get(f.name, f.read_bytes()) == f.read_bytes(), f
        bins[f.name] = f.read_bytes()
    msgs = {k: v for k, v in bins.items() if k.startswith("msgdata_")}
    receipt = next(c for c in vectors if c["file"] == "msgdata_has_read_receipt.bin")
    receipt_content = base64.b64decode(receipt["fields"]["content"])

    # toRedis: bare MsgData as the msg RPC produces it; the other OpenIM
    # records too (the stage must refuse or survive them).
    to_redis = list(bins.values())
    to_redis += [with_seq(m, 7) for m in msgs.values()]
    to_redis += [msgs["msgdata_group_text.bin"] + field_varint(9, 7)]  # unknown session type
    to_redis += [b"", b"\x0a\x02u1\x12\x02u2\x48\x01"]
    write("to_redis", to_redis)

    # toMongo: OpenIM's record, and records of each vector at bucket edges.
    to_mongo = [bins["mongo_record_two_msgs.bin"]]
    for i, m in enumerate(msgs.values()):
        seq = [1, 100, 101, 12345, (1 << 63) - 1][i % 5]
        to_mongo.append(mongo_record(seq - 1, "si_u100_u200", [with_seq(m, seq)]))
    g = msgs["msgdata_group_text.bin"]
    to_mongo += [
        mongo_record(99, "sg_g42", [with_seq(g, 100), with_seq(g, 101), with_seq(g, 100)]),
        mongo_record(0, "sg_g42", [with_seq(g, 0)]),  # refused: seq 0
        mongo_record(0, "sg_g42", [with_seq(g, -1)]),  # refused: negative
        mongo_record(5, "", [with_seq(g, 6)]),  # refused: no conversation
        mongo_record(5, "sg_g42", []),  # refused: no messages
        mongo_record(0, "x:y:1", [with_seq(g, 201)]),  # ':' in the conversation
    ]
    write("to_mongo", to_mongo)

    # Read receipts: OpenIM's content, and tips texts (the target also uses
    # the bytes as the `detail`).
    detail = json.loads(receipt_content)["detail"]
    read_receipt = [
        receipt_content,
        detail,
        '{"markAsReadUserID":"u200","conversationID":"si_u100_u200","seqs":[5,7,9],"hasReadSeq":8}',
        '{"markasreaduserid":"u1","CONVERSATIONID":"c","hasreadseq":3}',
        '{"conversationID":"c","hasReadSeq":-1}',
        '{"conversationID":"c","seqs":null,"hasReadSeq":null}',
        '{"conversationID":"c","seqs":[1.5]}',
        '{"conversationID":"c","hasReadSeq":"7"}',
        '{"conversationID":"c","seqs":[9223372036854775807]}',
        json.dumps({"detail": '{"conversationID":"sg_g42","seqs":[1,2]}'}),
        '{"detail":null}',
        "[1,2",
    ]
    write("read_receipt", read_receipt)

    # Cache documents (as Go and our encoder write them) and messages (the
    # target encodes those).
    cache = [
        '{"Msg":{"SendID":"u1","RecvID":"u2","GroupID":"","ClientMsgID":"c1","ServerMsgID":"",'
        '"SenderPlatformID":0,"SenderNickname":"","SenderFaceURL":"","SessionType":1,"MsgFrom":100,'
        '"ContentType":101,"Content":"\\u003ca\\u0026b\\u003e\\"\\n\\b\\u0001\\u2028","Seq":7,"SendTime":11,'
        '"CreateTime":10,"Status":1,"IsRead":false,"Options":{"a":false,"z":true},'
        '"OfflinePush":{"Title":"t","Desc":"","Ex":"","IOSPushSound":"","IOSBadgeCount":true},'
        '"AtUserIDList":["u3"],"AttachedInfo":"","Ex":""},"Revoke":null,"DelList":null,"IsRead":false}',
        '{"Msg":{"ClientMsgID":"c-0001","Seq":9223372036854775807}}',
        '{"Msg":{"ClientMsgID":"c","Seq":1.0}}',
        '{"Msg":null}',
    ]
    cache += list(msgs.values())
    cache += [msgs["msgdata_single_all_fields.bin"] + field_bytes(12, b"a\xe4\xb8b\xff<&>\xe2\x80\xa8")]
    write("cache_json", cache)

    # OpenIM's config folder, each file after its selector byte, as shipped
    # and without comments; environment overrides (7) and durations (8).
    config = []
    for i, name in enumerate(CONFIG_FILES):
        text = (CONFIG / name).read_bytes()
        config.append(bytes([i]) + text)
        bare = b"\n".join(
            line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(b"#")
        )
        config.append(bytes([i]) + re.sub(rb"\s+#.*", b"", bare) + b"\n")
    config.append(bytes([9]) + (CONFIG / "openim-msgtransfer.yml").read_bytes())  # index 1
    for env in [
        "KAFKA_ADDRESS=[localhost:9092, k2:9092]",
        "REDIS_PASSWORD=123456",
        "OPENIM_MSGTRANSFER_PROMETHEUS_ENABLE=false",
        "OPENIM_MSGTRANSFER_RUSTTRANSFER_LINGER=5ms",
        "KAFKA_TLS_ENABLETLS=true",
        "MONGODB_URI=mongodb://u:p@h:27017/db",
        "KAFKA_ADRESS=x",
    ]:
        config.append(b"\x07" + env.encode())
    for d in ["5s", "200ms", "1h30m", "1.5s", "0", "24h", "2562047h47m16.854775807s", "1.000000000000000000001ns", "-1s", "+3us"]:
        config.append(b"\x08" + d.encode())
    write("config_yaml", config)

    # RESP: what redis-rs sends (multibulk), inline commands, pipelines.
    def cmd(*args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else a.encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out

    resp = [
        cmd("GET", "k"),
        cmd("SET", "k", "v", "PX", "60000"),
        cmd("HSET", "MALLOC_SEQ:sg_g42", "CURR", "100", "LAST", "200", "TIME", "1764000000000"),
        cmd("EVALSHA", "0" * 40, "2", "MALLOC_SEQ:sg_g42", "MSG_CACHE:sg_g42", "3", "c-1"),
        cmd("CLIENT", "SETINFO", "LIB-NAME", "redis-rs") + cmd("CLIENT", "SETINFO", "LIB-VER", "1.2.2") + b"PING\r\n",
        cmd("SET", "bin", b"\x00\r\n\xff"),
        cmd("MULTI") + cmd("INCR", "x") + cmd("EXEC"),
        b"PING\r\n",
        b'SET k "a b\\n\\x41"\r\n',
        b"ECHO 'it\\'s'\n",
        b"*0\r\n*-1\r\nPING\r\n",
        b"*1\r\n$536870912\r\nab",
        b"*2\r\n$3\r\nGET\r\n",
    ]
    write("resp", resp)

    # Structured targets: seeded pseudo-random bytes of a few sizes, only
    # where nothing better is checked in.
    rng = random.Random(5)
    if not (CORPUS / "headers").exists():
        write("headers", [bytes(rng.randrange(256) for _ in range(n)) for n in (8, 32, 64, 128, 256, 512)])
    if not (CORPUS / "pipeline").exists():
        write("pipeline", [bytes(rng.randrange(256) for _ in range(n)) for n in (64, 128, 256, 512, 1024, 1024, 2048, 4096)])


if __name__ == "__main__":
    main()
