"""Reading run outputs with the standard library alone (shared by the command-line and Slurm tests)."""
import json
import struct


def f32_tensors(path):
    """The F32 tensors of a safetensors file (an adapter), by name, as tuples of floats."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name != "__metadata__":
            begin, end = info["data_offsets"]
            out[name] = struct.unpack(f"<{(end - begin) // 4}f", data[begin:end])
    return out
