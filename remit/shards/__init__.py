"""The annotation output format: schema, writer, reader, manifest, weights rule, validation.

It builds only on `remit.common` and needs only pyarrow and numpy.
"""

from remit.shards.manifest import MANIFEST_NAME, Manifest, ShardError, read_manifest
from remit.shards.reader import Output, open_output, read_shard
from remit.shards.schema import FORMAT_NAME, FORMAT_VERSION, SCHEMA
from remit.shards.weights import remit_weights
from remit.shards.writer import Rows, ShardInfo, build_table, write_shard

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "SCHEMA",
    "Manifest",
    "Output",
    "Rows",
    "ShardError",
    "ShardInfo",
    "build_table",
    "open_output",
    "read_manifest",
    "read_shard",
    "remit_weights",
    "write_shard",
]
