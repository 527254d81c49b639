"""Reading an offline wandb run back: the history rows in its `.wandb` file.

The file is wandb's transaction log: a 7-byte header (":W&B", magic, version), then LevelDB-style
log records (32 KiB blocks; each chunk has a CRC32C, a length, and a type: full, first, middle,
last) holding wandb's own protobuf `Record` messages (wandb.proto.wandb_internal_pb2).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
CHUNK_HEADER = 7  # crc32c (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb transaction log")
    pos, pending = 7, b""
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if pos + CHUNK_HEADER + length > len(data):  # a chunk still being written
            break
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (FIRST, MIDDLE):
            pending += chunk


def complete_records(path: str | Path, timeout_s: float = 120.0) -> list:
    """The log's records once it holds the run's `exit` record: `run.finish()` can return before
    wandb's writer process has flushed the last records (seen on a loaded machine). Raises
    TimeoutError when the exit record does not come within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = list(records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout_s:.0f} s (the run did not finish writing)")
        time.sleep(0.5)


def history(run_dir: str | Path) -> list[dict]:
    """The rows logged with run.log, as {key: value} (images as their JSON description)."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    rows = []
    for record in complete_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            )
    return rows
