#!/bin/sh
# Recreates tests/data/fashion-sample/ from the real Fashion-MNIST files.
#
# Source: the Debian package dataset-fashion-mnist, which installs
#   /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
# Selection: the first TRAIN_COUNT records of the training set and the first TEST_COUNT
# records of the test set, in file order, written back as gzip-compressed IDX files with the
# count in the header adjusted. The gzip header carries no file name and mtime 0, so running
# the script twice gives byte-identical files.
#
# Usage: scripts/make-fashion-sample.sh [source_dir] [output_dir]
set -eu

src=${1:-/usr/share/datasets/fashion-mnist}
here=$(cd "$(dirname "$0")" && pwd)
out=${2:-$here/../tests/data/fashion-sample}
TRAIN_COUNT=1200
TEST_COUNT=400

mkdir -p "$out"
python3 - "$src" "$out" "$TRAIN_COUNT" "$TEST_COUNT" <<'PY'
import gzip, io, struct, sys

src, out, train_count, test_count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def read_idx(path):
    data = gzip.open(path, "rb").read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    dims = list(struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim]))
    return dims, data[4 + 4 * ndim:]

def write_idx(path, dims, payload):
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(">" + "I" * len(dims), *dims)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as z:
        z.write(header + payload)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())

for split, count in (("train", train_count), ("t10k", test_count)):
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{split}-{kind}-ubyte.gz"
        dims, payload = read_idx(f"{src}/{name}")
        if count > dims[0]:
            sys.exit(f"{name}: asked for {count} records, the file has {dims[0]}")
        record = 1
        for d in dims[1:]:
            record *= d
        write_idx(f"{out}/{name}", [count] + dims[1:], payload[:count * record])
        print(f"{out}/{name}: {count} of {dims[0]} records")
PY
