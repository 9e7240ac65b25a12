"""Reads with h5py a file that h5depot handed out, checking every value.

Usage: h5py_reader.py FILE.h5
       h5py_reader.py http://HOST:PORT/v1/images/ID   (HDF5's ROS3 driver)

Checks everything h5py_writer.py writes (the same formulas), and /run/added
if present: int64, value(k) = k * k, which tests add through h5depot before
handing the file back. Prints one line per object checked; exits 0 if every
value matched, 1 with what differed otherwise.
"""
import sys

import h5py
import numpy as np


def check(name, ok, detail=""):
    print(f"{name}: {'ok' if ok else 'MISMATCH'}{' ' + detail if detail else ''}")
    return ok


def main():
    good = True
    source = sys.argv[1]
    # A URL is read lazily over HTTP range requests, as any h5py can.
    remote = {"driver": "ros3"} if source.startswith("http") else {}
    with h5py.File(source, "r", **remote) as f:
        good &= check("@title", f.attrs["title"] == "h5depot round trip")
        good &= check("@shape", list(f.attrs["shape"]) == [200, 300])
        config = f["run/config"]
        good &= check("run/config@threshold", config.attrs["threshold"] == 0.25)
        good &= check("run/config@label", config.attrs["label"] == "détecteur β")

        chunked = f["run/chunked"]
        rows, cols = np.indices((200, 300))
        good &= check("run/chunked", chunked.chunks == (50, 60) and np.array_equal(
            chunked[...], 3 * (300 * rows + cols) - 7), str(chunked.shape))

        gzip = f["run/gzip"]
        good &= check("run/gzip", gzip.compression == "gzip" and np.array_equal(
            gzip[...], (0.5 * np.arange(10000)).reshape(100, 100)),
            str(gzip.shape))

        names = [s.decode("utf-8") if isinstance(s, bytes) else s
                 for s in f["run/names"][...]]
        good &= check("run/names", names == ["alpha", "beta", "γάμμα", ""])

        if "run/added" in f:
            added = f["run/added"][...]
            good &= check("run/added", added.dtype == np.int64 and np.array_equal(
                added, np.arange(added.size, dtype=np.int64) ** 2),
                str(added.shape))
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
